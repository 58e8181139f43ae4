"""Training throughput of the generator on this machine: tokens/s and model-FLOPs utilisation.

Measures, in one run:

1. the machine's matmul peak (``torch.mm`` of square matrices, fp32 and bf16, per thread count),
   the denominator of MFU;
2. full training steps (forward, backward, clipping, Adam) of a preset's generator on real
   DailyDialog batches, for each configuration named by ``--configs``:
   ``<threads>t-<fp32|bf16>-<bucketed|sumsorted|random>[-compile][-fused]``, e.g.
   ``1t-fp32-bucketed``; ``fused`` leaves the attention kernel of a training step to PyTorch (its
   fused flash kernel when dropout is 0) instead of ``models.seq2seq.CPU_TRAINING_ATTENTION``.

FLOPs per step are counted by ``torch.utils.flop_counter.FlopCounterMode`` on the step's batches
(matmuls and attention, forward and backward, padding included). "Useful" tokens are the non-pad
source and target pieces; MFU = counted FLOP/s divided by the matmul peak of the same precision
and thread count.

    python -m benchmarks.train_throughput --preset small --out reports/train_throughput
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from models import seq2seq
from models.tokenizer import DialogueTokenizer
from training.config import get_preset
from training.core.data import load_splits
from training.core.generator import MLEObjective, PairSet, bucketed_batches
from training.core.run import RunSpec
from training.pipeline.inputs import tokenizer_texts


def matmul_peak(threads: int, dtype: torch.dtype, n: int = 1024, seconds: float = 2.0) -> float:
    """Best-of-five FLOP/s of an n x n matmul at ``threads`` intra-op threads."""
    torch.set_num_threads(threads)
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(5):
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 5:
            a @ b
            reps += 1
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start))
    return best


def random_batches(n: int, batch_size: int, *, seed: int, epoch: int) -> list[list[int]]:
    """Unbucketed batches: a plain shuffle (the padding baseline for length bucketing)."""
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


CONFIG_FLAGS = ("compile", "fused")


def parse_config(name: str) -> dict[str, Any]:
    parts = name.split("-")
    flags = parts[3:]
    if len(parts) < 3 or not parts[0].endswith("t") or any(f not in CONFIG_FLAGS for f in flags):
        raise ValueError(
            f"config {name!r}: expected <threads>t-<fp32|bf16>-<bucketed|sumsorted|random>"
            "[-compile][-fused]"
        )
    cfg = {
        "name": name,
        "threads": int(parts[0][:-1]),
        "precision": parts[1],
        "batching": parts[2],
        "compile": "compile" in flags,
        # PyTorch's own attention kernel choice in training (the fused flash kernel when dropout
        # is 0) instead of models.seq2seq.CPU_TRAINING_ATTENTION
        "fused_attention": "fused" in flags,
    }
    assert cfg["precision"] in ("fp32", "bf16"), name
    assert cfg["batching"] in ("bucketed", "sumsorted", "random"), name
    return cfg


def run_config(
    cfg: dict[str, Any],
    pairs: PairSet,
    model_cfg: Any,
    train_cfg: Any,
    *,
    steps: int,
    warmup: int,
    peaks: dict[str, float],
) -> dict[str, Any]:
    from models.seq2seq import Seq2SeqTransformer

    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    model = Seq2SeqTransformer(model_cfg)
    model.train()
    objective = MLEObjective(pairs.tokenizer.pad_id)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
    step_model = cast(nn.Module, torch.compile(model)) if cfg["compile"] else model
    if cfg["batching"] == "bucketed":
        batches = bucketed_batches(pairs.bucket_keys(), train_cfg.batch_size, seed=0, epoch=0)
    elif cfg["batching"] == "sumsorted":  # the previous bucketing: sorted by src + tgt length
        batches = bucketed_batches(
            pairs.lengths(), train_cfg.batch_size, seed=0, epoch=0, bucket_batches=50
        )
    else:
        batches = random_batches(len(pairs), train_cfg.batch_size, seed=0, epoch=0)
    batches = batches[: warmup + steps]
    use_bf16 = cfg["precision"] == "bf16"

    def step(idx: list[int]) -> float:
        batch = pairs.collate(idx)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            loss, _ = objective(step_model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return float(loss.detach())

    for idx in batches[:warmup]:
        step(idx)
    # FLOPs of the timed batches (counted on the eager model, same shapes).
    useful_tokens = padded_tokens = 0
    for idx in batches[warmup:]:
        b = pairs.collate(idx)
        useful_tokens += int(b.src.ne(0).sum() + b.tgt_out.ne(0).sum())
        padded_tokens += b.src.numel() + b.tgt_out.numel()
    flop_batches = batches[warmup : warmup + min(steps, 8)]
    fc = FlopCounterMode(display=False)
    sampled_tokens = 0
    with fc:
        for idx in flop_batches:
            batch = pairs.collate(idx)
            sampled_tokens += batch.src.numel() + batch.tgt_out.numel()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                loss, _ = objective(model, batch)
            loss.backward()
    opt.zero_grad(set_to_none=True)
    flops_sampled = fc.get_total_flops()
    counted = flops_sampled / max(sampled_tokens, 1) * padded_tokens  # scale by padded size
    times = []
    losses = []
    start = time.perf_counter()
    for idx in batches[warmup:]:
        t0 = time.perf_counter()
        losses.append(step(idx))
        times.append(time.perf_counter() - t0)
    wall = time.perf_counter() - start
    peak = peaks[f"{cfg['precision']}_{cfg['threads']}t"]
    flops_s = counted / wall
    return {
        **cfg,
        "steps": len(times),
        "wall_s": wall,
        "step_ms_median": 1000 * statistics.median(times),
        "useful_tokens_per_s": useful_tokens / wall,
        "pairs_per_s": len(times) * train_cfg.batch_size / wall,
        "padding_share": 1 - useful_tokens / padded_tokens,
        "flops_per_s": flops_s,
        "mfu": flops_s / peak,
        "mean_loss": statistics.fmean(losses),
    }


def loss_curve_parity(
    preset: Any, pairs: PairSet, val_pairs: PairSet, model_cfg: Any, *, steps: int, threads: int
) -> dict[str, list[dict[str, float]]]:
    """Train the same model from the same seed on the same batches with the real Trainer, once in
    fp32 and once under bf16 autocast; return each run's validation history."""
    import tempfile

    from models.seq2seq import Seq2SeqTransformer
    from training.core.distributed import DistContext
    from training.core.generator import run_generator_training

    torch.set_num_threads(threads)
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    curves: dict[str, list[dict[str, float]]] = {}
    for label, amp in (("fp32", False), ("bf16", True)):
        torch.manual_seed(0)
        model = Seq2SeqTransformer(model_cfg)
        with tempfile.TemporaryDirectory() as tmp:
            result = run_generator_training(
                model,
                MLEObjective(pairs.tokenizer.pad_id),
                preset=preset,
                train_pairs=pairs,
                val_pairs=val_pairs,
                run=RunSpec(Path(), "", Path(tmp), dist_ctx=ctx, resume=False),
                train_overrides={
                    "max_steps": steps,
                    "eval_every": max(1, steps // 5),
                    "amp": amp,
                    "progress": False,
                    "patience": 100,
                },
            )
        curves[label] = [
            {"step": h["step"], "val_loss": h["val_loss"]} for h in result.state.history
        ] + [{"wall_s": result.state.elapsed_s}]
        print(label, json.dumps(curves[label]))
    return curves


def to_markdown(result: dict[str, Any]) -> str:
    base = result["runs"][0]
    lines = [
        "# Generator training throughput",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Machine: {result['machine']}; load average before the run {result['load_before']}, "
        f"after {result['load_after']}. Preset `{result['preset']}` "
        f"({result['parameters'] / 1e6:.2f}M parameters, batch {result['batch_size']}, "
        f"max_context_turns {result['context_turns']}); {result['steps']} timed steps after "
        f"{result['warmup']} warm-up steps, the same batches for every configuration.",
        "",
        "Matmul peak (`torch.mm`, 1024 x 1024, best of five):",
        "",
        "| precision | threads | GFLOP/s |",
        "|---|---:|---:|",
    ]
    for k, v in result["peaks"].items():
        prec, th = k.split("_")
        lines.append(f"| {prec} | {th[:-1]} | {v / 1e9:.1f} |")
    lines += [
        "",
        f"Training steps (ratios against `{base['name']}`, measured in the same run):",
        "",
        "| config | step ms (median) | tokens/s | x baseline | pairs/s | padding | GFLOP/s | MFU | mean loss |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['name']} | {r['step_ms_median']:.1f} | {r['useful_tokens_per_s']:.0f} | "
            f"{r['useful_tokens_per_s'] / base['useful_tokens_per_s']:.2f}x | {r['pairs_per_s']:.0f} | "
            f"{r['padding_share']:.1%} | {r['flops_per_s'] / 1e9:.1f} | {r['mfu']:.1%} | "
            f"{r['mean_loss']:.3f} |"
        )
    if result.get("parity"):
        fp32, bf16 = result["parity"]["fp32"], result["parity"]["bf16"]
        lines += [
            "",
            "Loss-curve parity (the real Trainer, same seed and batches, 2 threads; validation "
            f"loss on {result['parity_val_pairs']} validation pairs):",
            "",
            "| step | fp32 val loss | bf16 val loss | bf16 - fp32 |",
            "|---:|---:|---:|---:|",
        ]
        for a, b in zip(fp32[:-1], bf16[:-1], strict=True):
            lines.append(
                f"| {a['step']:.0f} | {a['val_loss']:.4f} | {b['val_loss']:.4f} | "
                f"{b['val_loss'] - a['val_loss']:+.4f} |"
            )
        lines.append(
            f"| wall | {fp32[-1]['wall_s']:.0f} s | {bf16[-1]['wall_s']:.0f} s | "
            f"{bf16[-1]['wall_s'] / fp32[-1]['wall_s']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--data", type=Path, default=Path("../shared/data/dailydialog"))
    p.add_argument("--context-turns", type=int, default=0, help="0 = the preset's")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument(
        "--configs",
        default="1t-fp32-random,1t-fp32-bucketed,2t-fp32-bucketed,2t-bf16-bucketed",
    )
    p.add_argument("--batch-size", type=int, default=0, help="0 = the preset's")
    p.add_argument("--parity-steps", type=int, default=0, help="also train fp32 vs bf16 this long")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    preset = get_preset(args.preset)
    inputs = preset.inputs
    if args.context_turns:
        inputs = replace(inputs, max_context_turns=args.context_turns)
    load_before = os.getloadavg()
    splits = load_splits(args.data, max_context_turns=inputs.max_context_turns)
    tokenizer = DialogueTokenizer.train(tokenizer_texts(splits), preset.vocab_size)
    pairs = PairSet.encode(splits.train, tokenizer, inputs)
    model_cfg = replace(preset.generator.model, vocab_size=tokenizer.vocab_size)
    if args.batch_size:
        preset = replace(
            preset,
            generator=replace(
                preset.generator,
                train=replace(preset.generator.train, batch_size=args.batch_size),
            ),
        )
    configs = [parse_config(c) for c in args.configs.split(",")]
    peaks: dict[str, float] = {}
    for c in configs:
        for prec, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            key = f"{prec}_{c['threads']}t"
            if key not in peaks:
                peaks[key] = matmul_peak(c["threads"], dtype)
    runs = []
    for c in configs:
        kernels = () if c["fused_attention"] else seq2seq.CPU_TRAINING_ATTENTION
        with seq2seq.cpu_training_attention(kernels):
            r = run_config(
                c,
                pairs,
                model_cfg,
                preset.generator.train,
                steps=args.steps,
                warmup=args.warmup,
                peaks=peaks,
            )
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}))
        runs.append(r)
    from models.seq2seq import Seq2SeqTransformer

    parity = None
    if args.parity_steps:
        val_pairs = PairSet.encode(splits.validation[:1000], tokenizer, inputs)
        parity = loss_curve_parity(
            preset, pairs, val_pairs, model_cfg, steps=args.parity_steps, threads=2
        )
    result = {
        "parity": parity,
        "parity_val_pairs": 1000,
        "command": "python -m benchmarks.train_throughput " + " ".join(argv or sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "preset": preset.name,
        "parameters": Seq2SeqTransformer(model_cfg).num_parameters(),
        "batch_size": preset.generator.train.batch_size,
        "context_turns": inputs.max_context_turns,
        "steps": args.steps,
        "warmup": args.warmup,
        "peaks": peaks,
        "runs": runs,
    }
    md = to_markdown(result)
    print(md)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
        args.out.with_suffix(".md").write_text(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
