"""Settings of the malicious-response experiments (He & Glass, ACL 2020): Algorithm 1's negative
training (:class:`MaliciousNTConfig`) and, per preset, the search that measures hit rates."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from training.core.losses import LABEL_SMOOTHING

SearchMode = Literal["o", "io"]
HitType = Literal[
    "o-greedy", "o-sample-min", "o-sample-avg", "io-greedy", "io-sample-min", "io-sample-avg"
]
HIT_TYPES: dict[SearchMode, tuple[HitType, ...]] = {
    "o": ("o-greedy", "o-sample-min", "o-sample-avg"),
    "io": ("io-greedy", "io-sample-min", "io-sample-avg"),
}


@dataclass(frozen=True)
class GibbsEnumConfig:
    """Search hyper-parameters; the defaults are the paper's (Appendix A: T=5, G=100, 5 restarts,
    input length 15 as in its Appendix B)."""

    trigger_len: int = 15  # n
    candidates: int = 100  # G
    sweeps: int = 5  # T
    restarts: int = 5
    lm_weight: float = 1.0  # lambda_in of eq. 7 in io- searches (0 in o- searches)
    batch_targets: int = 64  # targets searched together (each with all its restarts)
    eval_chunk: int = 8192  # candidate sequences per no-grad forward pass

    def __post_init__(self) -> None:
        for name in ("trigger_len", "candidates", "sweeps", "restarts", "batch_targets"):
            if getattr(self, name) < 1:
                raise ValueError(f"gibbs-enum {name} must be >= 1")


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
