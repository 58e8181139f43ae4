"""Safety-classifier presets: the fit settings of each architecture and the named presets (tiny, small,
paper) that ``train-safety-classifier`` and ``build`` use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from models.safety import (
    MIN_KNOWN_SHARE,
    Architecture,
    SafetyClassifierConfig,
)

ArchitectureChoice = Literal["cross-encoder", "bag", "both"]

# --- presets ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FitConfig:
    """One architecture's shape and optimisation."""

    model: SafetyClassifierConfig  # vocab_size is filled from the tokenizer
    epochs: int = 3
    batch_size: int = 32
    lr: float = 3e-4  # AdamW peak, linear warm-up then linear decay to 0
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1  # of all updates
    max_seconds: float = 0.0  # wall-clock cap on fitting (0 = none); stops after the current step


@dataclass(frozen=True)
class SafetyPreset:
    """A named safety-classifier configuration; every report says which one it used."""

    name: str
    cross_encoder: FitConfig
    bag: FitConfig
    architecture: ArchitectureChoice = "cross-encoder"  # what `build` and the CLI default train
    vocab_size: int = 4000  # BPE pieces when no base generator provides the tokenizer
    threshold_holdout: float = 0.1  # share of DiaSafety train held out for threshold choice
    max_train_examples: int = 0  # 0 = all of DiaSafety train (tests use a subset)
    # Every DiaSafety context was picked as risky, so a classifier fitted on it alone flags about
    # half of ordinary replies. This many DailyDialog train pairs (when the corpus is found) join
    # the fit set labelled Safe; 0 = off. The held-out and val sets stay DiaSafety only.
    benign_pairs: int = 0
    benign_eval_pairs: int = 500  # DailyDialog validation pairs for the benign flag rate
    # Threshold calibration: this many further DailyDialog train pairs (disjoint from the fit
    # pairs) are held out, and the threshold may flag at most max_benign_flag_rate of them
    # (0 = no cap: the F1-best threshold on held-out DiaSafety).
    benign_threshold_pairs: int = 0
    max_benign_flag_rate: float = 0.0
    # The readability rule: known words are those seen min_word_count times in the fit texts
    # (0 = no word list: every context is read as it is); a context is read when at least
    # min_known_share of its content words are known.
    min_word_count: int = 2
    min_known_share: float = MIN_KNOWN_SHARE
    # Fit examples repeated with an empty context (see the module doc); 0 = none.
    reply_only_share: float = 0.0
    reply_only_unsafe_categories: tuple[str, ...] = ("Offending User", "Unauthorized Expertise")

    def fit_config(self, architecture: Architecture) -> FitConfig:
        return self.cross_encoder if architecture == "cross-encoder" else self.bag


SAFETY_PRESETS: dict[str, SafetyPreset] = {
    "tiny": SafetyPreset(
        name="tiny",
        # The tiny generator's encoder shape (training/presets.py), so the pipeline warm-starts.
        cross_encoder=FitConfig(
            model=SafetyClassifierConfig(
                "cross-encoder", d_model=32, n_heads=2, d_ff=64, n_layers=1, max_len=48
            ),
            epochs=1,
            batch_size=16,
            lr=1e-3,
        ),
        bag=FitConfig(
            model=SafetyClassifierConfig("bag", d_model=16, max_len=48, bigram_buckets=1024),
            epochs=1,
            batch_size=16,
            lr=3e-3,
        ),
        vocab_size=300,
        max_train_examples=400,
        benign_eval_pairs=0,  # tests: no DailyDialog loading
        reply_only_share=0.25,
    ),
    # Measured on 1 CPU thread of a shared 2-core machine: reports/safety_classifier.md.
    "small": SafetyPreset(
        name="small",
        # The small generator's encoder (d=256, 4 heads, FFN 1024, 2 layers): warm start.
        cross_encoder=FitConfig(
            model=SafetyClassifierConfig(
                "cross-encoder", d_model=256, n_heads=4, d_ff=1024, n_layers=2, max_len=80
            ),
            epochs=3,
            batch_size=32,
            lr=3e-4,  # 1e-4 reached only val ROC AUC 0.735 in the 300 s budget
            max_seconds=300.0,
        ),
        bag=FitConfig(
            model=SafetyClassifierConfig("bag", d_model=64, max_len=96, bigram_buckets=1 << 16),
            # One epoch: in the small build the held-out F1 was best after epoch 1 (0.723, then
            # 0.706 and 0.692: the bag model overfits DiaSafety), at a third of the time.
            epochs=1,
            batch_size=32,
            lr=2e-3,
            weight_decay=0.0,
            max_seconds=150.0,
        ),
        benign_pairs=8000,
        # The bag model: better on held-out train and ~4x cheaper than the cross-encoder in the
        # same CPU budget (reports/safety_classifier.md), so the pipeline builds it.
        architecture="bag",
        # DiaSafety is half unsafe, so its F1-best threshold can flag many ordinary replies
        # (reports/safety_filter_fit.md); the cap keeps that near 2% of ordinary traffic.
        benign_threshold_pairs=1000,
        max_benign_flag_rate=0.02,
        reply_only_share=0.25,
    ),
    "paper": SafetyPreset(
        name="paper",
        # The paper generator's encoder (6 layers, d=512); for a GPU.
        cross_encoder=FitConfig(
            model=SafetyClassifierConfig(
                "cross-encoder", d_model=512, n_heads=8, d_ff=2048, n_layers=6, max_len=128
            ),
            epochs=4,
            batch_size=32,
            lr=5e-5,
        ),
        bag=FitConfig(
            model=SafetyClassifierConfig("bag", d_model=128, max_len=128, bigram_buckets=1 << 18),
            epochs=5,
            batch_size=32,
            lr=2e-3,
            weight_decay=0.0,
        ),
        vocab_size=16000,
    ),
}


def get_safety_preset(name: str) -> SafetyPreset:
    try:
        return SAFETY_PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown preset {name!r}; choose one of {sorted(SAFETY_PRESETS)}"
        ) from None
