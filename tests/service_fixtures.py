"""Tiny random-weight bundles and helpers for the service tests (no artifacts/ needed)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from models.biencoder import BiEncoder, BiEncoderConfig
from models.decoding import DecodingConfig
from models.generator import GenerativeResponder, InputConfig
from models.retriever import IndexConfig, RetrievalResponder, build_response_index
from models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer
from models.tokenizer import DialogueTokenizer
from service.settings import Settings

RESPONSES = [
    "i am fine , thanks .",
    "it is ten o'clock .",
    "good morning to you !",
    "see you later .",
    "yes , of course .",
    "no , thanks .",
    "what time is it now ?",
    "good night .",
]
CONTEXTS = ["hello , how are you ?", "what time is it ?", "good morning !", "see you ."]
INPUTS = InputConfig(max_context_turns=2, max_source_len=16, max_target_len=12)
GENERATOR_MAX_LENGTH = 8


def build_tiny_bundles(
    models_dir: Path, *, generator: bool = True, retriever: bool = True, seed: int = 0
) -> Path:
    """Write a random-weight ``generator-nd`` and ``retriever-g2r`` bundle into ``models_dir``."""
    tokenizer = DialogueTokenizer.train(
        [*RESPONSES, *CONTEXTS] * 3, vocab_size=120, min_frequency=1
    )
    torch.manual_seed(seed)
    if generator:
        seq2seq = Seq2SeqTransformer(
            Seq2SeqConfig(
                vocab_size=tokenizer.vocab_size,
                d_model=16,
                n_heads=2,
                d_ff=32,
                n_encoder_layers=1,
                n_decoder_layers=1,
                dropout=0.0,
                max_positions=32,
            )
        ).eval()
        GenerativeResponder(
            seq2seq, tokenizer, INPUTS, DecodingConfig(max_length=GENERATOR_MAX_LENGTH)
        ).save(
            models_dir / "generator-nd",
            name="generator-nd",
            training={"method": "nd"},
            metrics={},
        )
    if retriever:
        biencoder = BiEncoder(
            BiEncoderConfig(
                vocab_size=tokenizer.vocab_size,
                d_model=16,
                n_heads=2,
                d_ff=32,
                n_layers=1,
                dropout=0.0,
                max_positions=32,
                embed_dim=8,
            )
        ).eval()
        index = build_response_index(
            biencoder, tokenizer, RESPONSES, INPUTS, IndexConfig(ef_search=16), progress=False
        )
        RetrievalResponder(biencoder, tokenizer, INPUTS, index, RESPONSES).save(
            models_dir / "retriever-g2r",
            name="retriever-g2r",
            training={"method": "g2r-dm"},
            metrics={},
        )
    return models_dir


def make_settings(models_dir: Path, **overrides: Any) -> Settings:
    """Settings for tests: CPU, the given bundles, no .env file read, and the process's current
    intra-op threads (the app sets TORCH_THREADS process-wide: other tests keep theirs)."""
    values: dict[str, Any] = {
        "models_dir": models_dir,
        "device": "cpu",
        "max_wait_ms": 1.0,
        "torch_threads": torch.get_num_threads(),
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


_SAMPLE_RE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")
_LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text exposition -> {(sample name, labels): value}."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE_RE.match(line)
        assert match, f"unparsable exposition line: {line!r}"
        labels = frozenset(_LABEL_RE.findall(match["labels"] or ""))
        samples[(match["name"], labels)] = float(match["value"])
    return samples


def sample(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """One sample's value; 0.0 when it is absent (a labelled child that never fired)."""
    return samples.get((name, frozenset(labels.items())), 0.0)
