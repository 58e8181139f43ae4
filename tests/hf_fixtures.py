"""Tiny random-weight Hugging Face models for the bring-your-own-generator tests (no model hub).

A byte-level BPE tokenizer is trained on a few DailyDialog lines (built-in sentences when the
corpus is absent) and wrapped in ``PreTrainedTokenizerFast``; a BART-like seq2seq and a GPT-2-like
causal LM are built from configs and saved with ``save_pretrained`` (safetensors).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

DAILYDIALOG_TRAIN = Path(__file__).resolve().parents[2] / "shared/data/dailydialog/train"
FALLBACK_LINES = [
    "Say , Jim , how about going for a few beers after dinner ?",
    "You know that is tempting but is really not good for our fitness .",
    "What do you mean ? It will help us to relax .",
    "Do you really think so ? I don't .",
    "hello , how are you ? i am fine , thanks .",
    "what time is it ? it is ten o'clock .",
]
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def corpus_lines(n: int = 200) -> list[str]:
    path = DAILYDIALOG_TRAIN / "dialogues_train.txt"
    if not path.is_file():
        return FALLBACK_LINES
    lines: list[str] = []
    with path.open(encoding="utf-8") as f:
        for dialogue in f:
            lines += [t.strip() for t in dialogue.split("__eou__") if t.strip()]
            if len(lines) >= n:
                break
    return lines[:n]


def tiny_tokenizer(vocab_size: int = 400, chat_template: str | None = None) -> Any:
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus_lines(), trainer)
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    if chat_template:
        tok.chat_template = chat_template
    return tok


def tiny_model(kind: str, vocab_size: int, *, d: int = 32, layers: int = 2, seed: int = 0) -> Any:
    """A random-weight GPT-2-like (``causal``) or BART-like (``seq2seq``) model. The weights are
    drawn wide (std 0.5) so greedy choices are clear-cut, not near-ties."""
    import transformers

    torch.manual_seed(seed)
    if kind == "causal":
        model = transformers.GPT2LMHeadModel(
            transformers.GPT2Config(
                vocab_size=vocab_size,
                n_positions=128,
                n_embd=d,
                n_layer=layers,
                n_head=2,
                bos_token_id=1,
                eos_token_id=2,
                pad_token_id=0,
                initializer_range=0.5,
            )
        )
    else:
        model = transformers.BartForConditionalGeneration(
            transformers.BartConfig(
                vocab_size=vocab_size,
                d_model=d,
                encoder_layers=layers,
                decoder_layers=layers,
                encoder_attention_heads=2,
                decoder_attention_heads=2,
                encoder_ffn_dim=2 * d,
                decoder_ffn_dim=2 * d,
                max_position_embeddings=128,
                pad_token_id=0,
                bos_token_id=1,
                eos_token_id=2,
                decoder_start_token_id=2,
                forced_bos_token_id=None,
                forced_eos_token_id=None,
                dropout=0.0,
                attention_dropout=0.0,
                activation_dropout=0.0,
                init_std=0.5,
            )
        )
    return model.eval()


def save_tiny_hf_model(out: Path, kind: str, *, chat_template: str | None = None) -> Path:
    """``out`` with a tiny model of ``kind`` (causal | seq2seq) and its tokenizer, safetensors."""
    tok = tiny_tokenizer(chat_template=chat_template)
    model = tiny_model(kind, len(tok))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
