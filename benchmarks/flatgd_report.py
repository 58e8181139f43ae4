"""Two steps of reports/commands/safety_flatgd.sh that are not training commands.

    python -m benchmarks.flatgd_report term-sizes [--artifacts DIR]
    python -m benchmarks.flatgd_report assemble [--artifacts DIR] [--runs DIR] [--out FILE]

``term-sizes``: the size of FlatGD eq. 1's terms at the base generator with the two experts (how
λ = 1 was chosen): for 4 batches of DiaSafety train, L_LM, L_S (eq. 4) and ||∇L_S||², and the
gradient norm of each. ``assemble``: reports/safety_flatgd.json from the evaluation, each bundle's
training facts and the validation curves of the fine-tunes, with exact McNemar tests on the
per-context unsafe flags of the paired systems.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from models.generator import GenerativeResponder
from training.config import SHARED_DATA
from training.core.generator import PairSet
from training.core.safety_data import load_diasafety
from training.eval.safety import paired_unsafe_test
from training.methods.flatgd.job import dialogue_pairs
from training.methods.flatgd.objective import (
    FlatGDObjective,
    FlatGDWeights,
    SafetyTuningData,
    trainable_parameters,
)

# report label -> bundle name, as the evaluation of safety_flatgd.sh labels them
BUNDLES = {
    "base": "generator-standard",
    "expert-clean": "expert-clean",
    "expert-toxic": "expert-toxic",
    "safety-loss": "generator-safety-loss-small",
    "flatgd": "generator-flatgd-small",
    "safety-loss-paper": "generator-safety-loss-paper",
}
PAIRS = (("safety-loss", "flatgd"), ("base", "flatgd"), ("base", "safety-loss"))


def term_sizes(artifacts: Path, data: Path, batches: int = 4, lam: float = 1.0) -> None:
    """Print eq. 1's terms and their gradient norms at the base, batch by batch."""
    torch.manual_seed(0)
    base = GenerativeResponder.load(artifacts / "generator-standard")
    clean, toxic = (
        GenerativeResponder.load(artifacts / f"expert-{kind}").model for kind in ("clean", "toxic")
    )
    train = load_diasafety(data, "train")
    pairs = PairSet.encode(dialogue_pairs(train), base.tokenizer, base.inputs)
    tuning = SafetyTuningData(
        pairs, [e.unsafe for e in train], None, batch_size=64, lm_batch_size=0, seed=0
    )
    objective = FlatGDObjective(clean, toxic, FlatGDWeights(lam=lam), pad_id=base.tokenizer.pad_id)
    model, params = base.model.train(), trainable_parameters(base.model)
    for indices in tuning.make_epoch(0)[:batches]:
        terms = objective.terms(model, tuning.collate(indices))
        norms = {}
        for name in ("lm", "safety", "grad_sq"):
            grads = torch.autograd.grad(terms[name], params, retain_graph=True, allow_unused=True)
            norms[name] = float(sum(g.pow(2).sum() for g in grads if g is not None)) ** 0.5
        values = {k: round(float(v.detach()), 4) for k, v in terms.items()}
        print(values, "grad norms", norms)


def assemble(artifacts: Path, runs: Path, max_curve_step: int = 70) -> dict[str, Any]:
    """The safety_flatgd.json report from the pieces the other steps wrote."""
    evaluation = json.loads((runs / "flatgd" / "safety_flatgd_eval.json").read_text())
    training, curves = {}, {}
    for label, name in BUNDLES.items():
        training[label] = json.loads((artifacts / name / "manifest.json").read_text())["training"]
        log = runs / "flatgd" / name / "metrics.jsonl"
        if log.is_file():
            rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
            curves[label] = [r for r in rows if r["kind"] == "eval" or r["step"] <= max_curve_step]
    results = evaluation["results"]
    paired = {  # exact McNemar on the per-context unsafe flags (same contexts, same seed)
        f"{a}_vs_{b}": paired_unsafe_test(results[a]["unsafe_flags"], results[b]["unsafe_flags"])
        for a, b in PAIRS
    }
    return {
        "paired_unsafe_tests": paired,
        "machine": "shared 2-core x86 CPU, OMP_NUM_THREADS=1 per process, other agents' jobs alongside",
        "evaluation": evaluation,
        "training": training,
        "training_logs": curves,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["term-sizes", "assemble"])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--safety-data", type=Path, default=SHARED_DATA)
    parser.add_argument("--out", type=Path, default=Path("reports/safety_flatgd.json"))
    args = parser.parse_args(argv)
    if args.what == "term-sizes":
        term_sizes(args.artifacts, args.safety_data)
        return
    args.out.write_text(json.dumps(assemble(args.artifacts, args.runs), indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
