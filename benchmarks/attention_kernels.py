"""Attention kernels on this CPU: PyTorch's fused (flash) kernel against matmul-softmax-matmul.

``F.scaled_dot_product_attention`` picks its fused flash kernel on the CPU whenever dropout is 0.
This times one attention call forward + backward (what a training step runs) and forward only
(what serving runs) at the shapes of the ``small`` preset's generator and retriever, in bf16 and
fp32, each kernel forced with ``torch.nn.attention.sdpa_kernel``, the kernels taking turns on the
same tensors. It is the measurement behind ``models.seq2seq.CPU_TRAINING_ATTENTION``.

    python -m benchmarks.attention_kernels --out reports/attention_kernels
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks import write_report

KERNELS = {"fused": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH}
# (what, batch, heads, query length, key length, head dim, padding mask, causal)
SHAPES: list[tuple[str, int, int, int, int, int, bool, bool]] = [
    ("small retriever, contexts (train batch)", 128, 4, 64, 64, 32, True, False),
    ("small retriever, responses (train chunk)", 32, 4, 24, 24, 32, True, False),
    ("small generator, encoder (train batch)", 64, 4, 48, 48, 64, True, False),
    ("small generator, decoder self (train batch)", 64, 4, 32, 32, 64, False, True),
    ("small generator, cross (train batch)", 64, 4, 32, 48, 64, True, False),
    ("batch 1, decoder step over 20 cached keys", 1, 4, 1, 20, 64, False, False),
    ("batch 1, retriever context of 20 tokens", 1, 4, 20, 20, 32, False, False),
]


def _timed(fn: Callable[[], None], reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def measure(
    shape: tuple[str, int, int, int, int, int, bool, bool],
    dtype: torch.dtype,
    *,
    rounds: int,
    reps: int,
) -> dict[str, Any]:
    what, b, h, t, s, d, masked, causal = shape
    g = torch.Generator().manual_seed(0)
    q = torch.randn(b, h, t, d, generator=g).to(dtype).requires_grad_()
    k = torch.randn(b, h, s, d, generator=g).to(dtype).requires_grad_()
    v = torch.randn(b, h, s, d, generator=g).to(dtype).requires_grad_()
    mask = None
    if masked:  # right padding: every row keeps at least its first half
        lengths = torch.randint(s // 2, s + 1, (b,), generator=g)
        mask = (torch.arange(s)[None, :] < lengths[:, None])[:, None, None, :]
    grad = torch.randn(b, h, t, d, generator=g).to(dtype)

    def train(kernel: SDPBackend) -> Callable[[], None]:
        def run() -> None:
            with sdpa_kernel([kernel]):
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
            out.backward(grad)

        return run

    def infer(kernel: SDPBackend) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode(), sdpa_kernel([kernel]):
                F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)

        return run

    out: dict[str, Any] = {"shape": what, "dims": [b, h, t, s, d], "dtype": str(dtype)[6:]}
    for mode, make, n in (("train", train, reps), ("infer", infer, reps * 10)):
        times: dict[str, list[float]] = {name: [] for name in KERNELS}
        for kernel in KERNELS.values():  # warm-up
            _timed(make(kernel), 3)
        for r in range(rounds):  # the kernels take turns, the order reversed every round
            order = list(KERNELS.items()) if r % 2 == 0 else list(KERNELS.items())[::-1]
            for name, kernel in order:
                times[name].append(_timed(make(kernel), n))
        for name in KERNELS:
            out[f"{mode}_{name}_ms"] = 1000 * statistics.median(times[name])
        out[f"{mode}_math_speedup"] = out[f"{mode}_fused_ms"] / out[f"{mode}_math_ms"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=10, help="calls per timing (x10 forward only)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows = [
        measure(shape, dtype, rounds=args.rounds, reps=args.reps)
        for shape in SHAPES
        for dtype in (torch.bfloat16, torch.float32)
    ]
    result = {
        "command": "python -m benchmarks.attention_kernels " + " ".join(argv or sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{args.threads} thread(s)",
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "rows": rows,
    }
    lines = [
        "# Attention kernels on this CPU: fused (flash) vs matmul-softmax-matmul",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}; load average before {result['load_before']}, after "
        f"{result['load_after']}. Medians of {args.rounds} rounds, the kernels taking turns on "
        "the same tensors; train = forward + backward of one call, infer = forward only under "
        "inference mode. Ratio = fused time / math time (above 1: math is faster).",
        "",
        "| shape (B, heads, T, S, head dim) | dtype | train fused ms | train math ms | "
        "train ratio | infer fused ms | infer math ms | infer ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} {tuple(r['dims'])} | {r['dtype']} | {r['train_fused_ms']:.3f} | "
            f"{r['train_math_ms']:.3f} | {r['train_math_speedup']:.2f}x | "
            f"{r['infer_fused_ms']:.4f} | {r['infer_math_ms']:.4f} | "
            f"{r['infer_math_speedup']:.2f}x |"
        )
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    write_report(args.out, result, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
