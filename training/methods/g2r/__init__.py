"""G2R (Kim et al., Findings of EMNLP 2021): teacher augmentation and scores, the retrieval
losses, the response set and the retriever job."""
