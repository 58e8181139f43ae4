"""Safety-classifier settings: the fit settings of each architecture and the section of a preset
that ``train-safety-classifier`` and ``build`` use (the named values: training/config)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from models.safety import (
    MIN_KNOWN_SHARE,
    Architecture,
    SafetyClassifierConfig,
)

ArchitectureChoice = Literal["cross-encoder", "bag", "both"]


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
