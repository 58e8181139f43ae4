"""Model code shared by training and serving: seq2seq, bi-encoder, tokenizer, decoding, metrics, bundles."""
