"""``small``: what ``make run`` builds on a 2-core CPU, the whole pipeline within ~15 minutes of an
idle machine (README: measured wall time). Training runs in bf16 on both cores with tight length
buckets (reports/train_throughput.md: 1.63x the tokens/s of the old fp32 loop), which buys about
one epoch for the generator; the build also fine-tunes an NT model and serves the least generic
generator of comparable perplexity (training/pipeline/selection.py).

Retrieval side, measured with ``OMP_NUM_THREADS=1 nice -n 15`` on the shared 2-core machine while
another job kept the other core busy (so an idle machine with 2 threads is faster):

- augmentation with the small generator (700 steps, d=256): 93 ms per context for m = 4
  (sampling plus LL and MI scores of gold + 4 replies), so 2,000 contexts take ~3.1 min;
- bi-encoder steps: 2 layers d=256 with 32 contexts + 128 random negatives 0.70 s/step and only
  Hits@1/K 0.034 after 360 steps (0.059 warm-started from the generator); 1 layer d=128 with 128
  contexts + 16 random negatives 0.17 s/step and Hits@1/K 0.084 after 500 steps, 0.138 after
  1000 (Hits@5/K 0.366). 800 steps + 4 validations ~2.4 min;
- embedding ~60k responses and building the HNSW index: ~15 s.

Safety classifier: measured on 1 CPU thread of a shared 2-core machine (reports/safety_classifier.md).
Malicious responses: what a 2-core CPU affords (reports/safety.md): one search costs 2-5 s per
target at n=10, G=50, T=3 on one (shared) thread, so evaluation uses that and training a cheaper
search.
"""

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
from training.methods.g2r.filter import TeacherReplyFilter
from training.methods.malicious.config import GibbsEnumConfig, MaliciousNTConfig, MaliciousPreset
from training.methods.safety_classifier.config import FitConfig, SafetyPreset

PRESET = Preset(
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
            # No dropout: 1.46x faster steps (reports/retriever_step_attention_small.md) at equal
            # test Hits@1/100 (served 0.2822 vs 0.2818, dense 0.2245 vs 0.2201, one seed:
            # reports/retriever_dropout_small.md)
            dropout=0.0,
            max_positions=128,
            embed_dim=128,
        ),
        train=TrainConfig(
            # 3-turn bi-encoder, validation Hits@1/100: .172 / .177 / .199 after 1,000 / 1,200 /
            # 1,500 updates. 2,400 (session 11): G2R-D test Hits@1/100 dense .1696 -> .2197 and
            # served .2503 -> .2850 (z +4.1, reports/retriever_steps_small.md) for 2 min 31 s more
            # of the build (reports/build_small.md): the best use of the 15-minute budget's slack
            # found so far. 2,100 since session 14 (no dropout): its three builds each kept the
            # step-2,100 weights (validation Hits@1/100 .255/.257/.250 at 2,100 against
            # .248/.242/.247 at 2,400), and the schedule does not depend on max_steps, so the
            # last 300 updates (~45 s) bought nothing. 3,100 since session 24: 1,000 more updates
            # (training 139.4 s -> 214.2 s) lift test Hits@1/100 as served 0.3129 -> 0.3269, dense
            # 0.2763 -> 0.2912, validation .298 -> .324 (reports/retriever_3100_small.md); the
            # whole build timed 8 min 52 s with them, on a fast day (reports/build_small.md)
            max_steps=3100,
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
        # eq. 2 in both directions (CLIP's loss, not G2R's), on top of the warm start: three seeds
        # each higher, served test Hits@1/100 0.3103 vs 0.3030 (z +1.43), dense 0.2679 vs 0.2566
        # (reports/retriever_symmetric_seeds_small.md), at no cost per step. `paper` keeps G2R's eq. 2.
        symmetric_loss=True,
        val_examples=1000,
        response_max_tokens=40,
        # The standard generator's token embeddings, projected by PCA to d=128 (the layers cannot
        # be copied from its d=256): over three seeds test Hits@1/100 as served 0.3030 vs 0.2843
        # (z +3.7), dense 0.2566 vs 0.2283 (reports/retriever_embpca_seeds_small.md)
        warm_start=True,
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
            # No dropout: 1,000 updates of 64 pairs see each pair about once, so there is nothing
            # to regularise against. Validation perplexity 62.7 -> 59.6 at 1,000 updates, and the
            # served NT model's test Dist-2 0.0119 -> 0.0150 at a lower max-ratio and perplexity
            # (reports/generator_dropout_small.md)
            dropout=0.0,
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
    # MMI-antiLM (models/decoding.py) on the first 3 tokens at lambda 0.55: on 1,000 validation
    # contexts the served NT model's greedy Dist-2 1.54x, BLEU-4 1.14x, max-ratio 0.54x plain
    # greedy's, its replies as likely under the model (log p/token -0.03); the most diverse setting
    # within those bounds (reports/anti_lm_small_val.md). Re-run on the session-14 NT bundle now
    # served, the same rule would pick lambda 0.25 on 5 tokens (Dist-2 1.23x): 0.55 / 3 gives
    # it Dist-2 1.49x and max-ratio 0.53x but BLEU-4 0.92x and log p/token -0.11, outside those
    # bounds (reports/anti_lm_small_val_s17.md); kept for the less generic replies that small
    # serves, the gap stated. base and paper keep plain greedy, as
    # the papers decode. No token twice in a row: anti-LM made 5.5% of the served model's test
    # replies stutter ("about about about a few days ."; references: 0.1%); blocking them changed
    # Dist-2 and BLEU-4 by < 2% and raised the replies' log p/token
    # (reports/adjacent_repeats_small.md).
    # The plausibility constraint (alpha 0.1, session 24): at the anti-LM positions only tokens
    # with p >= 0.1 x the likeliest one's. For greedy it changes little (validation Dist-2 1.64x
    # plain greedy's against 1.61x, BLEU-4 0.99x both: reports/anti_lm_plausibility_small_val.md);
    # it is what keeps *sampled* replies from anti-LM's non-words (a client's strategy=sample,
    # and the safety filter's alternatives: reports/safety_alternatives_small.md).
    decoding=DecodingConfig(
        max_length=32,
        no_repeat_ngram_size=3,
        block_adjacent_repeats=True,
        anti_lm=0.55,
        anti_lm_steps=3,
        anti_lm_plausibility=0.1,
    ),
    # The teacher: the standard model fine-tuned on D_N (measurably more generic than it,
    # reports/quality_small.md), the student: the ND schedule as a fine-tune of the standard.
    # 100 student updates, not 150: the whole build measured 15 min 13 s with 150 (the
    # student's stage 97 s, reports/build_small.md) and the student is not what small serves.
    nd=NDPreset(
        teacher_steps=100, teacher_init="standard", student_init="standard", student_steps=100
    ),
    eval_examples=500,  # in `build`; benchmarks/quality_report.py scores the whole test split
    nt_steps=150,
    # NT chases generic replies; keep its least generic step by Dist-2 (session 18), not by
    # max-ratio: over NT's 16 evaluated steps in two runs, validation Dist-2 ranks the steps'
    # test Dist-2 with Spearman 0.95 (max-ratio its own 0.92), and the step it keeps has test
    # Dist-2 0.0160 / 0.0157 against max-ratio's 0.0123 / 0.0123, at test max-ratio 0.14 (<= .25)
    # (reports/nt_select_dist2_small.md)
    nt_select="most-distinct",
    # on all 1,000 validation pairs the generators hold, not 500: on the build's own NT run the
    # three best steps were 0.0963 / 0.0967 / 0.0972 apart in validation Dist-2 on 500 (a spread
    # below the sample's noise; their test Dist-2 0.0151 / 0.0154 / 0.0144,
    # reports/nt_select_dist2_small_2t*.md), for 20 s more of the NT stage (1:26 -> 1:46 in the
    # two session-18 builds, reports/build_small.md)
    nt_select_examples=1000,
    # evaluated every 10 updates from update 80 on (8 points, not 4): its validation max-ratio
    # swings 0.05-0.19 between neighbouring points, and the closer look kept a less generic step
    # in each of 3 seeds (test max-ratio mean 0.071 vs 0.099, Dist-2 0.0131 vs 0.0128, BLEU-4
    # 0.0201 vs 0.0203, ppl 65.6 vs 63.9) for ~15 s more (reports/nt_select_evals_small.md)
    nt_select_evals=15,
    safety=SafetyPreset(
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
    malicious=MaliciousPreset(
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
    # Table 5's schedule at lr 1e-4: the 4.7M-parameter base moves too little at 5e-6
    flatgd=FlatGDSetting("small", lr=1e-4),
)
