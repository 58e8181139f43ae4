"""Bi-encoder training steps with and without length-sorted response chunks, PyTorch's fused
attention kernel and dropout (same batches and weights, one run).

A G2R batch embeds ~5 positives for each of its contexts plus shared random negatives, padded to
the longest response of the batch, so about half of the response tokens are padding.
``TextEncoder.forward(chunk_rows=...)`` sorts the responses by length and encodes them in chunks
trimmed to their own longest row. This benchmark times full training steps (forward, loss,
backward, clipping, Adam, bf16 autocast where the trainer would use it) on real DailyDialog
batches of a preset's bi-encoder, alternating the settings step by step so that machine load
hits all alike, and checks that all give the same loss on the same batch (in eval mode, so
without dropout). ``--fused-attention`` adds the library's chunks with PyTorch's own attention
kernel choice in training (its fused flash kernel when dropout is 0; the library takes
``models.seq2seq.CPU_TRAINING_ATTENTION``), ``--dropouts`` other dropout rates; ``--baseline``
names the setting the speed-ups are against.

    python -m benchmarks.retriever_step --preset small --tokenizer runs/small/tokenizer.json \\
        --steps 30 --out reports/retriever_step
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks import write_report
from models import biencoder, seq2seq
from models.biencoder import BiEncoder
from models.device import native_bf16
from models.tokenizer import DialogueTokenizer
from training.config import get_preset
from training.core.data import load_splits
from training.core.generator import bucketed_batches
from training.methods.g2r.augment import read_shards
from training.methods.g2r.batches import RetrievalObjective, RetrievalTrainSet
from training.methods.g2r.data import ResponseFilter, build_retrieval_data
from training.methods.g2r.losses import G2RDistillationLoss


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--tokenizer", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/dailydialog"))
    ap.add_argument("--steps", type=int, default=30, help="timed steps per setting")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument(
        "--chunk-rows",
        default="32,64,128",
        help="comma-separated chunk sizes to time against no chunking",
    )
    ap.add_argument(
        "--augmentation",
        type=Path,
        help="G2R augmentation shards (teacher replies as extra positives, as G2R trains)",
    )
    ap.add_argument(
        "--fused-attention",
        action="store_true",
        help="also time the library's chunks with PyTorch's own attention kernel choice (the fused "
        "flash kernel when dropout is 0) instead of models.seq2seq.CPU_TRAINING_ATTENTION",
    )
    ap.add_argument(
        "--dropouts",
        default="",
        help="comma-separated dropout rates to also time at the library's chunks (the same "
        "weights; the preset's rate is the default)",
    )
    ap.add_argument("--baseline", default="padded to the batch", help="a setting's name")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    preset = get_preset(args.preset).retriever
    assert preset is not None, f"preset {args.preset} has no retriever"
    tokenizer = DialogueTokenizer.from_file(args.tokenizer)
    splits = load_splits(args.data, max_context_turns=preset.inputs.max_context_turns)
    augmented = read_shards(args.augmentation)[1] if args.augmentation else None
    data = build_retrieval_data(
        splits.train,
        augmented,
        ResponseFilter(preset.response_min_tokens, preset.response_max_tokens, ()),
        score=preset.teacher_score,
    )
    trainset = RetrievalTrainSet(
        data,
        tokenizer,
        preset.inputs,
        positives_per_context=preset.positives_per_context,
        random_negatives=preset.random_negatives,
    )
    batches = bucketed_batches(
        trainset.context_lengths(), preset.train.batch_size, seed=0, epoch=0
    )[: args.warmup + args.steps]
    torch.manual_seed(0)
    dropout = preset.model.dropout
    model = BiEncoder(replace(preset.model, vocab_size=tokenizer.vocab_size))
    model.train()
    objective = RetrievalObjective(G2RDistillationLoss(1.0, preset.temperature))
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    use_bf16 = native_bf16(torch.device("cpu"))

    default_rows = biencoder.RESPONSE_CHUNK_ROWS
    default_attention = seq2seq.CPU_TRAINING_ATTENTION

    def use(setting: tuple[int, bool, float]) -> None:
        rows, fused, p = setting
        biencoder.RESPONSE_CHUNK_ROWS = rows
        seq2seq.CPU_TRAINING_ATTENTION = () if fused else default_attention
        for m in model.modules():  # the rate is read at every call, so the weights stay shared
            if isinstance(m, nn.Dropout):
                m.p = p
            elif isinstance(m, seq2seq.MultiHeadAttention):
                m.dropout = p

    def step(idx: list[int], setting: tuple[int, bool, float]) -> tuple[float, float]:
        use(setting)
        batch = trainset.collate(idx)
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            loss, _ = objective(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return time.perf_counter() - t0, float(loss.detach())

    # name -> (response chunk rows, PyTorch's fused attention kernel in training, dropout)
    settings: dict[str, tuple[int, bool, float]] = {"padded to the batch": (0, False, dropout)}
    settings.update(
        {f"chunks of {n}": (n, False, dropout) for n in map(int, args.chunk_rows.split(",")) if n}
    )
    if args.fused_attention:
        settings[f"chunks of {default_rows}, fused attention"] = (default_rows, True, dropout)
    for p in (float(x) for x in args.dropouts.split(",") if x):
        settings[f"chunks of {default_rows}, dropout {p:g}"] = (default_rows, False, p)
        if args.fused_attention:
            settings[f"chunks of {default_rows}, dropout {p:g}, fused attention"] = (
                default_rows,
                True,
                p,
            )
    if args.baseline not in settings:
        ap.error(f"--baseline {args.baseline!r}: the settings are {sorted(settings)}")
    times: dict[str, list[float]] = {k: [] for k in settings}
    loss_gap = 0.0
    padding = {"responses": 0, "response_tokens": 0, "padded": 0}
    for i, idx in enumerate(batches):
        b = trainset.collate(idx)
        lengths = b.response_ids.ne(tokenizer.pad_id).sum(dim=1)
        # Loss parity on the same weights: evaluate both settings before either updates them.
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            model.eval()
            losses = []
            for setting in settings.values():
                use(setting)
                losses.append(float(objective(model, b)[0]))
            model.train()
        loss_gap = max(loss_gap, max(losses) - min(losses))
        order = list(settings.items()) if i % 2 == 0 else list(settings.items())[::-1]
        for name, setting in order:
            dt, _ = step(idx, setting)
            if i >= args.warmup:
                times[name].append(dt)
        if i >= args.warmup:
            padding["responses"] += b.response_ids.size(0)
            padding["response_tokens"] += int(lengths.sum())
            padding["padded"] += b.response_ids.numel()
    use((default_rows, False, dropout))
    base = statistics.median(times[args.baseline])
    result: dict[str, Any] = {
        "command": "python -m benchmarks.retriever_step " + " ".join(argv or sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{args.threads} thread(s), bf16 autocast {'on' if use_bf16 else 'off'}, the preset's "
        f"bi-encoder dropout {dropout:g}",
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "preset": args.preset,
        "augmentation": str(args.augmentation) if args.augmentation else None,
        "default_chunk_rows": default_rows,
        "baseline": args.baseline,
        "steps_per_setting": len(times["padded to the batch"]),
        "responses_per_batch": padding["responses"] / max(len(times["padded to the batch"]), 1),
        "response_padding_share": 1 - padding["response_tokens"] / max(padding["padded"], 1),
        "max_loss_gap_eval": loss_gap,
        "settings": {
            name: {
                "step_ms_median": 1000 * statistics.median(ts),
                "speedup_vs_baseline": base / statistics.median(ts),
            }
            for name, ts in times.items()
        },
    }
    lines = [
        f"# Bi-encoder training step: response chunks and attention kernel (preset {args.preset})",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}.  ",
        f"Load average (1, 5, 15 min): before {result['load_before']}, after "
        f"{result['load_after']}. The settings take turns (order reversed every step) on the "
        f"same batches; G2R augmentation: {result['augmentation'] or 'none (plain bi-encoder)'}; "
        f"the library default is chunks of {default_rows}.",
        "",
        f"{result['steps_per_setting']} timed steps each; {result['responses_per_batch']:.0f} "
        f"responses per batch, {100 * result['response_padding_share']:.1f}% of their padded "
        f"positions are padding. Largest loss difference between the settings on the same "
        f"batch and weights: {loss_gap:.2e}.",
        "",
        f"| setting | median step ms | speed-up vs {args.baseline} |",
        "|---|---:|---:|",
    ]
    for name, row in result["settings"].items():
        lines.append(
            f"| {name} | {row['step_ms_median']:.1f} | {row['speedup_vs_baseline']:.2f}x |"
        )
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    write_report(args.out, result, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
