"""Named, committed training configurations. Every report says which preset produced it.

* ``tiny``: tests; seconds; meaningless replies.
* ``small``: what ``make run`` builds on a 2-core CPU (the whole pipeline within ~15 minutes), so
  the model is small and the generator sees a fraction of an epoch.
* ``paper``: the ND paper's generator (6+6 layers, d=512, 8 heads, FFN 2048, dropout 0.1,
  batch 256, warm-up 128000 as in its eq. 17 appendix); for a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from models.decoding import DecodingConfig
from models.generator import InputConfig
from models.seq2seq import Seq2SeqConfig
from training.trainer import TrainConfig


@dataclass(frozen=True)
class GeneratorPreset:
    """Architecture (vocab_size is filled from the tokenizer) and optimisation of one generator."""

    model: Seq2SeqConfig
    train: TrainConfig
    val_examples: int  # validation pairs used for the early-stopping loss (0 = all)


@dataclass(frozen=True)
class NDPreset:
    """Negative distillation (ND paper section 2; its values unless noted)."""

    negative_fraction: float = 0.5  # D_N = top 50% of pairs by source entropy
    gamma_fraction: float = 0.5  # γ = gamma_fraction * student max_steps (paper: γ = 25600)
    lam: float = 4.0  # λ of eq. 15: peak α = 1
    temperature: float = 1.0  # t of eq. 7


@dataclass(frozen=True)
class Preset:
    name: str
    vocab_size: int  # BPE vocabulary, special tokens included
    inputs: InputConfig
    generator: GeneratorPreset
    decoding: DecodingConfig = field(default_factory=DecodingConfig)  # the bundle's default
    nd: NDPreset = field(default_factory=NDPreset)
    eval_examples: int = 0  # test pairs scored by `evaluate` (0 = the whole split)
    max_train_examples: int = 0  # 0 = the whole training split


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
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
    ),
    "small": Preset(
        name="small",
        vocab_size=4000,
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
                max_steps=600,
                batch_size=64,
                warmup_steps=200,
                lr_scale=0.5,  # peak lr 2.2e-3: eq. 17 with a 200-step warm-up peaks too high at 2.0
                lr_dim=256,
                eval_every=150,
                patience=3,
                log_every=10,
            ),
            val_examples=1000,
        ),
        decoding=DecodingConfig(max_length=32, no_repeat_ngram_size=3),
        eval_examples=0,
    ),
    "paper": Preset(
        name="paper",
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
