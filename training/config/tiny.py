"""``tiny``: the tests' preset; seconds per stage, meaningless replies."""

from __future__ import annotations

from models.biencoder import BiEncoderConfig
from models.decoding import DecodingConfig
from models.generator import InputConfig
from models.retriever import IndexConfig
from models.safety import SafetyClassifierConfig
from models.seq2seq import Seq2SeqConfig
from training.config.sections import (
    AugmentConfig,
    GeneratorPreset,
    Preset,
    RetrieverPreset,
)
from training.core.trainer import TrainConfig
from training.methods.malicious.config import GibbsEnumConfig, MaliciousNTConfig, MaliciousPreset
from training.methods.safety_classifier.config import FitConfig, SafetyPreset

PRESET = Preset(
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
        rerank_val_examples=32,  # seconds, not the whole split
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
    safety=SafetyPreset(
        name="tiny",
        # The tiny generator's encoder shape (above), so the pipeline warm-starts.
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
    malicious=MaliciousPreset(
        eval_search=GibbsEnumConfig(trigger_len=4, candidates=8, sweeps=2, restarts=1),
        nt=MaliciousNTConfig(
            iterations=1,
            target_batch=8,
            max_updates=2,
            pos_batch=8,
            search=GibbsEnumConfig(trigger_len=4, candidates=8, sweeps=1, restarts=1),
        ),
    ),
)
