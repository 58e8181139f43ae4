"""Adam's update step, per-tensor loop vs torch's fused kernel, for the models the presets train.

The Trainer (training/core/trainer.py) builds Adam/AdamW with ``fused=True`` on CPU and CUDA.
This benchmark shows why and checks it changes nothing but speed: for each preset's generator,
bi-encoder and (bag) safety classifier it fills every parameter's gradient with the same seeded
noise, then alternates optimizer steps of the default implementation (torch's ``foreach`` loop)
and of the fused one on two copies of the model, and prints the median milliseconds per step,
their ratio, and the largest difference between the two copies' parameters after all steps.

    python -m benchmarks.optimizer_step --presets small base --steps 20 \\
        --out reports/optimizer_step
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks import write_report
from models.biencoder import BiEncoder
from models.safety import build_classifier_model
from models.seq2seq import Seq2SeqTransformer
from training.config import get_preset
from training.eval.tables import markdown_table


def preset_models(name: str) -> dict[str, nn.Module]:
    """The three models a preset trains with Adam, at the preset's shapes (random weights)."""
    preset = get_preset(name)
    vocab = preset.vocab_size
    if preset.retriever is None or preset.safety is None:
        raise ValueError(f"preset {name!r} trains no retriever or no safety classifier")
    safety = preset.safety.fit_config(
        "bag" if preset.safety.architecture == "bag" else "cross-encoder"
    ).model
    return {
        "generator": Seq2SeqTransformer(replace(preset.generator.model, vocab_size=vocab)),
        "bi-encoder": BiEncoder(replace(preset.retriever.model, vocab_size=vocab)),
        f"safety ({safety.architecture})": build_classifier_model(
            replace(safety, vocab_size=vocab, sep_id=3)
        ),
    }


def time_steps(model: nn.Module, steps: int, seed: int = 0) -> dict[str, Any]:
    """Median ms per ``Adam.step`` for the default and the fused implementation (alternating),
    and the largest parameter difference between the two after ``steps`` steps."""
    twins = {"default": model, "fused": copy.deepcopy(model)}
    gen = torch.Generator().manual_seed(seed)
    grads = [torch.randn(p.shape, generator=gen) for p in model.parameters()]
    optimizers = {}
    for label, m in twins.items():
        for p, g in zip(m.parameters(), grads, strict=True):
            p.grad = g.clone()
        optimizers[label] = torch.optim.Adam(
            m.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-9, fused=label == "fused"
        )
    times: dict[str, list[float]] = {label: [] for label in twins}
    for _ in range(steps):
        for label, opt in optimizers.items():
            started = time.perf_counter()
            opt.step()
            times[label].append(1000 * (time.perf_counter() - started))
    diff = max(
        float((a - b).abs().max())
        for a, b in zip(twins["default"].parameters(), twins["fused"].parameters(), strict=True)
    )
    default_ms = statistics.median(times["default"][1:])
    fused_ms = statistics.median(times["fused"][1:])
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "default_ms": default_ms,
        "fused_ms": fused_ms,
        "speedup": default_ms / fused_ms,
        "max_param_diff": diff,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["small", "base"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows = []
    for preset in args.presets:
        torch.manual_seed(0)
        for label, model in preset_models(preset).items():
            r = time_steps(model, args.steps)
            rows.append({"preset": preset, "model": label, **r})
            print(
                f"{preset:6s} {label:22s} {r['parameters']:>10,d} params  default "
                f"{r['default_ms']:7.2f} ms  fused {r['fused_ms']:7.2f} ms  "
                f"{r['speedup']:.2f}x  max |diff| {r['max_param_diff']:.2e}",
                flush=True,
            )
    load_after = os.getloadavg()
    command = "python -m benchmarks.optimizer_step " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} with "
        f"{args.threads} thread(s); load average {[round(x, 2) for x in load_before]} before, "
        f"{[round(x, 2) for x in load_after]} after"
    )
    table = markdown_table(
        [
            "preset",
            "model",
            "parameters",
            "default ms/step",
            "fused ms/step",
            "fused speed-up",
            "max param diff after all steps",
        ],
        [
            [
                r["preset"],
                r["model"],
                f"{r['parameters']:,}",
                f"{r['default_ms']:.2f}",
                f"{r['fused_ms']:.2f}",
                f"{r['speedup']:.2f}x",
                f"{r['max_param_diff']:.1e}",
            ]
            for r in rows
        ],
    )
    markdown = (
        "# Adam's step: per-tensor (default) vs fused\n\n"
        f"Command: `{command}`  \nMachine: {machine}.  \n"
        f"{args.steps} steps of each, alternating, the same seeded gradients; medians without the "
        "first step.\n\n" + table + "\n"
    )
    write_report(args.out, {"machine": machine, "command": command, "rows": rows}, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
