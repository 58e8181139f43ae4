"""``paper``: the ND paper's generator (6+6 layers, d=512, 8 heads, FFN 2048, dropout 0.1, batch
256, warm-up 128000 as in its eq. 17 appendix), G2R's dense-only retriever, the FlatGD Table 5
fine-tune and He & Glass's search; for a GPU. Single-turn, as the papers."""

from __future__ import annotations

from models.biencoder import BiEncoderConfig
from models.decoding import DecodingConfig
from models.generator import InputConfig
from models.safety import SafetyClassifierConfig
from models.seq2seq import Seq2SeqConfig
from training.config.sections import (
    AugmentConfig,
    GeneratorPreset,
    NDPreset,
    Preset,
    RetrieverPreset,
)
from training.core.trainer import TrainConfig
from training.methods.flatgd.config import FlatGDSetting
from training.methods.malicious.config import GibbsEnumConfig, MaliciousNTConfig, MaliciousPreset
from training.methods.safety_classifier.config import FitConfig, SafetyPreset

PRESET = Preset(
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
    safety=SafetyPreset(
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
    malicious=MaliciousPreset(eval_search=GibbsEnumConfig(), nt=MaliciousNTConfig()),
    flatgd=FlatGDSetting("paper", lr=5e-6),  # Table 5
)
