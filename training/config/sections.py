"""The config tree's sections: every setting of a preset is a field of one of these frozen
dataclasses, with its default here (or in the section's own module when a method owns it:
:class:`~training.methods.safety_classifier.config.SafetyPreset`,
:class:`~training.methods.malicious.config.MaliciousPreset`,
:class:`~training.methods.flatgd.config.FlatGDSetting`). The named values are one file per preset
beside this one; commands override a field with ``dataclasses.replace`` and jobs take the section
they need, with no defaults of their own."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from models.biencoder import BiEncoderConfig
from models.decoding import DecodingConfig
from models.generator import InputConfig
from models.retriever import IndexConfig
from models.seq2seq import Seq2SeqConfig
from training.core.trainer import TrainConfig
from training.methods.flatgd.config import FlatGDSetting
from training.methods.g2r.filter import TeacherReplyFilter
from training.methods.malicious.config import MaliciousPreset
from training.methods.nd.entropy import EntropyConfig
from training.methods.safety_classifier.config import SafetyPreset

# The shared data folder beside the repository (../shared/data): DailyDialog, DiaSafety, the He &
# Glass target lists and the response blocklist. Every command's default --data starts here.
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
DAILYDIALOG = SHARED_DATA / "dailydialog"


@dataclass(frozen=True)
class AugmentConfig:
    """Data-level G2R (Kim et al. 2021, sec. 2.3): how many teacher replies, sampled how."""

    m: int = 10  # teacher replies per training context (paper: 10)
    top_k: int = 20  # top-k sampling (Fan et al. 2018; paper: 20)
    no_repeat_ngram_size: int = 3  # n-gram blocking (paper: trigrams)
    min_lengths: tuple[int, ...] = (10, 20)  # the m replies are split evenly over these minimums
    max_length: int = 32  # generated pieces per reply, EOS included
    max_contexts: int = 0  # training contexts augmented: a seeded subset (0 = all)
    batch_contexts: int = 16  # contexts per teacher call (and per shard flush)
    seed: int = 0
    # 0: sample the m replies as the paper does. n > 0: generate, then rank (the service's
    # GENERATIVE_RERANK): the teacher's beam-n n-best, ranked by a retriever bundle given to
    # `augment --rank-with`, its m best kept (min_lengths and top_k then unused)
    rank_pool: int = 0
    # ranked only: a reply text is kept for at most this many contexts (0 = no cap), the next
    # best of the n-best taking its place: ranked replies are generic and repeat across contexts
    rank_max_uses: int = 0

    def __post_init__(self) -> None:
        assert self.m >= 1, f"m must be >= 1, got {self.m}"
        assert self.min_lengths, "min_lengths must name at least one minimum length"
        assert all(0 <= n <= self.max_length for n in self.min_lengths), (
            f"min_lengths {self.min_lengths} must lie in [0, max_length={self.max_length}]"
        )
        assert self.rank_pool == 0 or self.rank_pool >= self.m, (
            f"rank_pool {self.rank_pool} must be 0 (sampling) or at least m={self.m}"
        )

    def replies_per_min_length(self) -> list[tuple[int, int]]:
        """(min_length, count) pairs splitting m as evenly as possible: 10 over (10, 20) -> 5 + 5."""
        n = len(self.min_lengths)
        counts = [self.m // n + (1 if i < self.m % n else 0) for i in range(n)]
        return [(ml, c) for ml, c in zip(self.min_lengths, counts, strict=True) if c]


@dataclass(frozen=True)
class RetrieverPreset:
    """Everything the retrieval stages need for one preset."""

    name: str
    inputs: InputConfig  # context/response limits; the same as the generators of this preset
    model: BiEncoderConfig  # vocab_size is filled from the tokenizer
    train: TrainConfig  # batch_size = unique contexts per update
    augment: AugmentConfig
    positives_per_context: int = 10  # gold + teacher replies per context in a batch (paper: 10)
    random_negatives: int = 512  # shared random negatives per batch from the response set (paper)
    alpha: float = 0.9  # eq. 5 weight of L_CE against L_KD (paper: 0.9)
    temperature: float = 1.0  # eq. 4 (paper: 1)
    teacher_score: str = "ll"  # G(c, r): "ll" (eq. 3) or "mi" (eq. 6)
    # eq. 2 in both directions (responses also pick their context; CLIP's loss, not G2R's)
    symmetric_loss: bool = False
    val_examples: int = 0  # validation pairs for Hits@1/K and Hits@5/K (0 = all)
    hits_k: int = 100  # K: the gold plus K - 1 random responses of the split
    response_min_tokens: int = 1  # response-set length bounds (whitespace tokens, inclusive)
    response_max_tokens: int = 60
    index: IndexConfig = field(default_factory=IndexConfig)
    # start both encoders from a generator of ours (`build`: the standard one; `train-retriever
    # --init-from auto`: the teacher bundle): its whole encoder when the shapes match, else its
    # token embeddings projected by PCA (models/biencoder.py)
    warm_start: bool = True
    # the quality bar teacher replies pass to enter D^G and R^G (None = every reply enters)
    teacher_filter: TeacherReplyFilter | None = None
    # what `build` trains: "g2r-dm" (data + model level, eq. 5) or "g2r-d" (data level only)
    method: Literal["g2r-d", "g2r-dm"] = "g2r-dm"
    # also train a plain bi-encoder (no teacher) and serve whichever has the higher validation
    # Hits@1/K (training/pipeline/selection.py): G2R is served only where its teacher helps
    biencoder_baseline: bool = False
    # re-rank the index's candidates by bi-encoder + TF-IDF (models/lexical.py), the weight
    # chosen on validation (0 = off); the paper preset keeps G2R's dense-only ranking
    lexical_rerank: bool = True
    # validation pairs the re-ranking weight is chosen on (0 = the whole split): on 1,000 the
    # choice was noise (the neighbouring weights differ by less than one standard error, and it
    # cost the small build's served retriever 0.011 test Hits@1; reports/rerank_weight_small.md)
    rerank_val_examples: int = 0

    def __post_init__(self) -> None:
        assert self.method in ("g2r-d", "g2r-dm"), (
            f"build trains g2r-d or g2r-dm, not {self.method!r}"
        )


@dataclass(frozen=True)
class GeneratorPreset:
    """Architecture (vocab_size is filled from the tokenizer) and optimisation of one generator."""

    model: Seq2SeqConfig
    train: TrainConfig
    val_examples: int  # validation pairs used for the early-stopping loss (0 = all)
    # fine-tunes (NT, UL, ND from the standard model) of a base trained with the linear schedule
    # run at this share of its peak learning rate (training/core/generator.py fine_tune_overrides)
    fine_tune_lr_fraction: float = 0.25


@dataclass(frozen=True)
class NDPreset:
    """Negative distillation (ND paper section 2; its values unless noted)."""

    negative_fraction: float = 0.5  # D_N = top 50% of pairs by source entropy
    gamma_fraction: float = 0.5  # γ = gamma_fraction * student max_steps (paper: γ = 25600)
    lam: float = 4.0  # λ of eq. 15: peak α = 1
    temperature: float = 1.0  # t of eq. 7
    teacher_steps: int = 0  # negative teacher's updates (0 = the generator's max_steps)
    # The paper trains the student from scratch ("scratch"). "standard" fine-tunes the standard
    # model with the ND schedule for ``student_steps`` updates: on the small CPU budget this was
    # better on every metric than from scratch (reports/negative_distillation.md) and 3.5x cheaper.
    student_init: str = "scratch"
    student_steps: int = 0  # 0 = the generator's max_steps
    # The paper trains the teacher from scratch on D_N ("scratch"). "standard" fine-tunes the
    # standard model on D_N for ``teacher_steps``: a generic teacher for a fraction of the cost.
    teacher_init: str = "scratch"
    # How H_src (eq. 4) is computed for D_N: exact strings ("identity": on DailyDialog 87% of pairs
    # tie at 0, so most of D_N is a random draw) or clusters of utterances (Csáky et al. 2019;
    # reports/nd_negative_set.md: 1.3% of D_N drawn at random with 3,000 clusters, radius 0.75).
    entropy: EntropyConfig = field(default_factory=EntropyConfig)

    def __post_init__(self) -> None:
        for field_name in ("student_init", "teacher_init"):
            value = getattr(self, field_name)
            assert value in ("scratch", "standard"), (
                f"{field_name} must be 'scratch' or 'standard', got {value!r}"
            )


@dataclass(frozen=True)
class Preset:
    name: str
    vocab_size: int  # BPE vocabulary, special tokens included
    inputs: InputConfig
    generator: GeneratorPreset
    decoding: DecodingConfig = field(default_factory=DecodingConfig)  # the bundle's default
    nd: NDPreset = field(default_factory=NDPreset)
    retriever: RetrieverPreset | None = None  # the G2R retriever built from this preset
    eval_examples: int = 0  # test pairs scored by `evaluate` (0 = the whole split)
    max_train_examples: int = 0  # 0 = the whole training split
    # NT (He & Glass 2020, Alg. 2) fine-tune of the standard model that `build` adds to the
    # served-generator candidates (training/pipeline/selection.py); 0 = not built
    nt_steps: int = 0
    # which NT weights are kept: "last" (a fixed budget, as the ND paper runs its baselines),
    # "least-generic" (of the evaluated steps, the one whose greedy replies to validation
    # sources have the lowest max-ratio: NT chases one generic reply after another, and the last
    # step can land on the next one; reports/nt_select_small.md) or "most-distinct" (the one
    # with the highest Dist-2 of those replies; reports/nt_select_dist2_small.md)
    nt_select: str = "last"
    # with "least-generic" or "most-distinct": evaluation points, evenly spaced over the budget,
    # of which those from half the budget on run (each: greedy replies to nt_select_examples
    # validation sources and the validation perplexity)
    nt_select_evals: int = 6
    # validation sources each of those evaluations decodes greedily (drawn across the split; at
    # most the generators' val_examples)
    nt_select_examples: int = 500
    # the DiaSafety classifier (train-safety-classifier, build's safety stage)
    safety: SafetyPreset | None = None
    # He & Glass's trigger search and Algorithm 1 (the malicious-* commands)
    malicious: MaliciousPreset | None = None
    # the FlatGD fine-tune (train-flatgd --setting NAME reads preset NAME's)
    flatgd: FlatGDSetting | None = None
    # fields changed from the named preset by ``--set key=value`` (training.config.with_overrides),
    # as given; recorded in bundles and build summaries, and they give the runs a folder of their own
    overrides: tuple[str, ...] = ()

    @property
    def run_name(self) -> str:
        """The preset's folder under ``--runs``: its name, plus a digest of the overrides when
        there are any, so a changed preset never resumes a checkpoint of another."""
        if not self.overrides:
            return self.name
        digest = hashlib.sha1("\n".join(self.overrides).encode()).hexdigest()[:8]
        return f"{self.name}+{digest}"
