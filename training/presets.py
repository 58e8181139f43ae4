"""Named, committed training configurations. Every report says which preset produced it.

* ``tiny``: tests; seconds; meaningless replies.
* ``small``: what ``make run`` builds on a 2-core CPU, the whole pipeline within ~15 minutes of an
  idle machine (README: measured wall time). Training runs in bf16 on both cores with tight
  length buckets (reports/train_throughput.md: 1.63x the tokens/s of the old fp32 loop), which
  buys about one epoch for the generator; the build also fine-tunes an NT model and serves the
  least generic generator of comparable perplexity (training/pipeline/selection.py).
* ``base``: the reproduction preset, ~2 hours for the whole pipeline on the same CPU: 3+3 layers
  for several epochs, the ND teacher from scratch on a clustered-entropy D_N, the student
  fine-tuned; a 2-layer retriever on 3-turn contexts beside a plain bi-encoder.
  Every stage resumes from its last checkpoint, so it can run across sessions.
* ``paper``: the ND paper's generator (6+6 layers, d=512, 8 heads, FFN 2048, dropout 0.1,
  batch 256, warm-up 128000 as in its eq. 17 appendix); for a GPU. Single-turn, as the paper.

Retrieval side (``Preset.retriever``), measured for ``small``:

* ``small``: what ``make run`` builds on a 2-core CPU inside the ~15-minute budget of the whole
  pipeline. Measured with ``OMP_NUM_THREADS=1 nice -n 15`` on the shared 2-core machine while
  another job kept the other core busy (so an idle machine with 2 threads is faster):

  - augmentation with the small generator (700 steps, d=256): 93 ms per context for m = 4
    (sampling plus LL and MI scores of gold + 4 replies), so 2,000 contexts take ~3.1 min;
  - bi-encoder steps: 2 layers d=256 with 32 contexts + 128 random negatives 0.70 s/step and
    only Hits@1/K 0.034 after 360 steps (0.059 warm-started from the generator); 1 layer
    d=128 with 128 contexts + 16 random negatives 0.17 s/step and Hits@1/K 0.084 after 500
    steps, 0.138 after 1000 (Hits@5/K 0.366). 800 steps + 4 validations ~2.4 min;
  - embedding ~60k responses and building the HNSW index: ~15 s.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from models.biencoder import BiEncoderConfig
from models.decoding import DecodingConfig
from models.generator import InputConfig
from models.retriever import IndexConfig
from models.seq2seq import Seq2SeqConfig
from training.core.trainer import TrainConfig
from training.methods.g2r.filter import TeacherReplyFilter
from training.methods.nd.entropy import EntropyConfig

# The shared data folder beside the repository (../shared/data): DailyDialog, DiaSafety, the He &
# Glass target lists and the response blocklist. Every command's default --data starts here.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
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

    def __post_init__(self) -> None:
        assert self.m >= 1, f"m must be >= 1, got {self.m}"
        assert self.min_lengths, "min_lengths must name at least one minimum length"
        assert all(0 <= n <= self.max_length for n in self.min_lengths), (
            f"min_lengths {self.min_lengths} must lie in [0, max_length={self.max_length}]"
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
    val_examples: int = 0  # validation pairs for Hits@1/K and Hits@5/K (0 = all)
    hits_k: int = 100  # K: the gold plus K - 1 random responses of the split
    response_min_tokens: int = 1  # response-set length bounds (whitespace tokens, inclusive)
    response_max_tokens: int = 60
    index: IndexConfig = field(default_factory=IndexConfig)
    warm_start: bool = True  # copy a same-shaped generator's encoder into both encoders
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


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        retriever=RetrieverPreset(
            name="tiny",
            inputs=InputConfig(max_context_turns=1, max_source_len=24, max_target_len=16),
            model=BiEncoderConfig(
                d_model=32,
                n_heads=2,
                d_ff=64,
                n_layers=1,
                dropout=0.1,
                max_positions=64,
                embed_dim=32,
            ),
            train=TrainConfig(
                max_steps=6,
                batch_size=8,
                warmup_steps=2,
                lr_scale=1.0,
                lr_dim=32,
                eval_every=3,
                patience=3,
                log_every=1,
                progress=False,
            ),
            augment=AugmentConfig(
                m=2, min_lengths=(1, 3), max_length=8, max_contexts=24, batch_contexts=8
            ),
            positives_per_context=3,
            random_negatives=16,
            val_examples=32,
            response_max_tokens=40,
            index=IndexConfig(ef_search=64, add_batch_size=512),
        ),
        vocab_size=300,
        inputs=InputConfig(max_context_turns=1, max_source_len=24, max_target_len=16),
        generator=GeneratorPreset(
            model=Seq2SeqConfig(
                d_model=32,
                n_heads=2,
                d_ff=64,
                n_encoder_layers=1,
                n_decoder_layers=1,
                dropout=0.1,
                max_positions=64,
            ),
            train=TrainConfig(
                max_steps=12,
                batch_size=16,
                warmup_steps=4,
                lr_scale=2.0,
                lr_dim=32,
                eval_every=6,
                patience=3,
                log_every=2,
                progress=False,
            ),
            val_examples=64,
        ),
        decoding=DecodingConfig(max_length=12),
        eval_examples=64,
        max_train_examples=2000,
        nt_steps=2,
    ),
    "small": Preset(
        name="small",
        retriever=RetrieverPreset(
            name="small",
            # The retriever reads the last 3 turns (the generators read 1): reports/quality_small.md
            # measured both; multi-turn context helps retrieval and, at this budget, not generation.
            inputs=InputConfig(max_context_turns=3, max_source_len=64, max_target_len=32),
            # One narrow layer: on 2 CPU cores the step count matters more than depth (module doc).
            model=BiEncoderConfig(
                d_model=128,
                n_heads=4,
                d_ff=512,
                n_layers=1,
                dropout=0.1,
                max_positions=128,
                embed_dim=128,
            ),
            train=TrainConfig(
                # 3-turn bi-encoder, validation Hits@1/100: .172 / .177 / .199 after 1,000 / 1,200 /
                # 1,500 updates; 1,200 is what the 15-minute budget of the whole build leaves
                max_steps=1200,
                batch_size=128,
                warmup_steps=60,
                lr_scale=0.15,  # peak lr 0.15 / sqrt(60) / sqrt(128) = 1.7e-3
                lr_dim=128,
                eval_every=300,
                patience=3,
                log_every=20,
            ),
            augment=AugmentConfig(
                m=4, min_lengths=(5, 10), max_length=32, max_contexts=600, batch_contexts=32
            ),
            positives_per_context=5,
            random_negatives=16,
            val_examples=1000,
            response_max_tokens=40,
            warm_start=False,  # the small generator is d=256; a d=256 bi-encoder learned too slowly
            teacher_filter=TeacherReplyFilter(),
            # Data-level G2R only: with this teacher the model-level term (eq. 5) cost test
            # Hits@1/100 (g2r-dm below the bi-encoder in each seed, g2r-d level with it:
            # reports/retriever_seeds_small.md), so small trains G2R-D.
            method="g2r-d",
        ),
        vocab_size=4000,
        # Single-turn generators: at 1,000 updates a 3-turn model reached the same perplexity but
        # was more generic (greedy max-ratio .455 vs .285) at 2.2 against 3.9 updates/s
        # (reports/context_turns.md; the rates from the runs' progress bars).
        inputs=InputConfig(max_context_turns=1, max_source_len=48, max_target_len=32),
        generator=GeneratorPreset(
            model=Seq2SeqConfig(
                d_model=256,
                n_heads=4,
                d_ff=1024,
                n_encoder_layers=2,
                n_decoder_layers=2,
                dropout=0.1,
                max_positions=128,
            ),
            train=TrainConfig(
                # bf16 and tighter buckets (reports/train_throughput.md) buy 1,000 updates (0.95
                # epoch) in less time than 700 took before.
                max_steps=1000,
                batch_size=64,
                warmup_steps=200,
                lr_scale=0.5,  # peak lr 2.2e-3: eq. 17 with a 200-step warm-up peaks too high at 2.0
                lr_dim=256,
                eval_every=250,
                patience=3,
                log_every=10,
            ),
            val_examples=1000,
        ),
        decoding=DecodingConfig(max_length=32, no_repeat_ngram_size=3),
        # The teacher: the standard model fine-tuned on D_N (measurably more generic than it,
        # reports/quality_small.md), the student: the ND schedule as a fine-tune of the standard.
        # 100 student updates, not 150: the whole build measured 15 min 13 s with 150 (the
        # student's stage 97 s, reports/build_small.md) and the student is not what small serves.
        nd=NDPreset(
            teacher_steps=100, teacher_init="standard", student_init="standard", student_steps=100
        ),
        eval_examples=500,  # in `build`; benchmarks/quality_report.py scores the whole test split
        nt_steps=150,
    ),
    "base": Preset(
        name="base",
        # For the reproduction reports: 3+3 layers for ~5 epochs, the ND teacher from scratch on the
        # clustered-entropy D_N as in the paper, the student fine-tuned. Not yet run end to end
        # (README: its wall time once measured).
        retriever=RetrieverPreset(
            name="base",
            inputs=InputConfig(max_context_turns=3, max_source_len=64, max_target_len=32),
            # Two narrow layers rather than small's one: depth at d=128 keeps a step ~2x small's
            # (a d=256 2-layer step was ~8x: 3,000 of them alone would take the 2-hour budget).
            model=BiEncoderConfig(
                d_model=128,
                n_heads=4,
                d_ff=512,
                n_layers=2,
                dropout=0.1,
                max_positions=128,
                embed_dim=128,
            ),
            train=TrainConfig(
                max_steps=2500,
                batch_size=128,
                warmup_steps=100,
                lr_scale=0.15,
                lr_dim=128,
                eval_every=500,
                patience=4,
                log_every=50,
            ),
            augment=AugmentConfig(
                m=4, min_lengths=(5, 10), max_length=32, max_contexts=3000, batch_contexts=32
            ),
            positives_per_context=5,
            random_negatives=64,
            val_examples=2000,
            response_max_tokens=40,
            warm_start=False,
            teacher_filter=TeacherReplyFilter(),
            # the G2R comparison of the reproduction report, and the served one by validation
            biencoder_baseline=True,
        ),
        vocab_size=6000,
        inputs=InputConfig(max_context_turns=1, max_source_len=48, max_target_len=32),
        generator=GeneratorPreset(
            model=Seq2SeqConfig(
                d_model=256,
                n_heads=4,
                d_ff=1024,
                n_encoder_layers=3,
                n_decoder_layers=3,
                dropout=0.1,
                max_positions=128,
            ),
            train=TrainConfig(
                max_steps=5000,
                batch_size=64,
                warmup_steps=400,
                lr_scale=0.6,
                lr_dim=256,
                eval_every=500,
                patience=4,
                log_every=20,
            ),
            val_examples=2000,
        ),
        decoding=DecodingConfig(max_length=32, no_repeat_ngram_size=3),
        # The teacher as in the paper (from scratch on D_N, here the clustered-entropy D_N); the
        # student as a fine-tune of the standard model with the ND schedule: better on every metric
        # than from scratch at small scale (reports/negative_distillation.md) and it keeps the
        # whole pipeline inside ~2 hours (4,000 student updates from scratch: an estimated ~45 minutes).
        nd=NDPreset(
            gamma_fraction=0.5,
            teacher_steps=2000,
            student_init="standard",
            student_steps=1000,
            entropy=EntropyConfig(method="avg-embedding", clusters=3000, radius=0.75),
        ),
        eval_examples=2000,
        nt_steps=400,
    ),
    "paper": Preset(
        name="paper",
        retriever=RetrieverPreset(
            name="paper",
            inputs=InputConfig(max_context_turns=1, max_source_len=128, max_target_len=64),
            model=BiEncoderConfig(
                d_model=512,
                n_heads=8,
                d_ff=2048,
                n_layers=6,
                dropout=0.1,
                max_positions=256,
                embed_dim=512,
            ),
            train=TrainConfig(
                max_steps=60_000,
                batch_size=48,
                warmup_steps=4000,
                lr_scale=1.0,
                lr_dim=512,
                eval_every=1000,
                patience=10,
                log_every=50,
            ),
            augment=AugmentConfig(
                m=10, min_lengths=(10, 20), max_length=64, max_contexts=0, batch_contexts=64
            ),
            positives_per_context=10,
            random_negatives=512,
            val_examples=0,
            response_max_tokens=60,
            lexical_rerank=False,  # G2R ranks by the bi-encoder alone
        ),
        vocab_size=16000,
        inputs=InputConfig(max_context_turns=1, max_source_len=128, max_target_len=64),
        generator=GeneratorPreset(
            model=Seq2SeqConfig(
                d_model=512,
                n_heads=8,
                d_ff=2048,
                n_encoder_layers=6,
                n_decoder_layers=6,
                dropout=0.1,
                max_positions=256,
            ),
            train=TrainConfig(
                max_steps=200_000,
                batch_size=256,
                warmup_steps=128_000,
                lr_scale=2.0,
                lr_dim=512,
                eval_every=2000,
                patience=10,
                log_every=50,
            ),
            val_examples=0,
        ),
        decoding=DecodingConfig(max_length=64),
        nd=NDPreset(gamma_fraction=25_600 / 200_000),  # the paper's γ = 25600
        eval_examples=0,
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


def with_context_turns(preset: Preset, turns: int, max_source_len: int = 0) -> Preset:
    """``preset`` reading the last ``turns`` turns (generators and retriever alike), with an
    optional new source length; how the 1- vs multi-turn measurements are run."""
    if turns < 1:
        raise ValueError(f"context turns must be >= 1, got {turns}")
    inputs = replace(
        preset.inputs,
        max_context_turns=turns,
        max_source_len=max_source_len or preset.inputs.max_source_len,
    )
    retriever = preset.retriever
    if retriever is not None:
        retriever = replace(
            retriever,
            inputs=replace(
                retriever.inputs,
                max_context_turns=turns,
                max_source_len=max_source_len or retriever.inputs.max_source_len,
            ),
        )
    return replace(preset, inputs=inputs, retriever=retriever)


def get_retriever_preset(name: str) -> RetrieverPreset:
    """The retrieval side of preset ``name``."""
    retriever = get_preset(name).retriever
    if retriever is None:
        raise ValueError(f"preset {name!r} has no retriever configuration")
    return retriever


RETRIEVER_PRESETS: dict[str, RetrieverPreset] = {
    name: p.retriever for name, p in PRESETS.items() if p.retriever is not None
}
