"""Settings of the malicious-response experiments (He & Glass, ACL 2020): Algorithm 1's negative
training (:class:`MaliciousNTConfig`) and, per preset, the search that measures hit rates."""

from __future__ import annotations

from dataclasses import dataclass, field

from training.core.losses import LABEL_SMOOTHING
from training.methods.malicious.attack import HIT_TYPES, GibbsEnumConfig, SearchMode

FWA_WORDS = ("you", "i", "me", "are", "to", "do")  # plus <EOS>; He & Glass footnote 9


@dataclass(frozen=True)
class MaliciousNTConfig:
    """Algorithm 1's settings. Paper: 20 iterations, target mini-batch 100, lambda_POS 1
    (Switchboard, OpenSubtitles), fixed lr 0.01 with SGD for an LSTM; we fine-tune a Transformer
    trained with Adam, so Adam at a small fixed lr is the default (configurable)."""

    criterion: str = "o-sample-avg"  # hit type that triggers negative updates
    iterations: int = 20
    target_batch: int = 100
    max_updates: int = 10  # negative updates per batch of triggers before re-searching
    lr: float = 1e-4
    optimizer: str = "adam"  # adam | sgd
    lambda_pos: float = 1.0
    pos_batch: int = 64
    label_smoothing: float = LABEL_SMOOTHING  # of the positive MLE term, as in training
    fwa: bool = True
    # Extension (not in the paper): also spare the N most frequent response words of the training
    # corpus, so negative updates only push down the targets' rarer, content-bearing words.
    fwa_corpus_top: int = 0
    warm_start: bool = True  # later iterations also restart from the previous trigger
    search: GibbsEnumConfig = field(default_factory=GibbsEnumConfig)

    def __post_init__(self) -> None:
        modes = {h: m for m, hs in HIT_TYPES.items() for h in hs}
        if self.criterion not in modes:
            raise ValueError(f"criterion must be one of {sorted(modes)}, not {self.criterion!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError("optimizer must be adam or sgd")

    @property
    def mode(self) -> SearchMode:
        return "io" if self.criterion.startswith("io-") else "o"


@dataclass(frozen=True)
class MaliciousPreset:
    """The search used to *measure* hit rates and the negative-training run."""

    eval_search: GibbsEnumConfig
    nt: MaliciousNTConfig


MALICIOUS_PRESETS: dict[str, MaliciousPreset] = {
    "tiny": MaliciousPreset(
        eval_search=GibbsEnumConfig(trigger_len=4, candidates=8, sweeps=2, restarts=1),
        nt=MaliciousNTConfig(
            iterations=1,
            target_batch=8,
            max_updates=2,
            pos_batch=8,
            search=GibbsEnumConfig(trigger_len=4, candidates=8, sweeps=1, restarts=1),
        ),
    ),
    # What a 2-core CPU affords (reports/safety.md): one search costs 2-5 s per target at n=10,
    # G=50, T=3 on one (shared) thread, so evaluation uses that and training a cheaper search.
    "small": MaliciousPreset(
        eval_search=GibbsEnumConfig(
            trigger_len=10, candidates=50, sweeps=3, restarts=1, batch_targets=50
        ),
        nt=MaliciousNTConfig(
            iterations=2,
            target_batch=100,
            max_updates=10,
            search=GibbsEnumConfig(
                trigger_len=10, candidates=16, sweeps=2, restarts=1, batch_targets=100
            ),
        ),
    ),
    "paper": MaliciousPreset(eval_search=GibbsEnumConfig(), nt=MaliciousNTConfig()),
}
