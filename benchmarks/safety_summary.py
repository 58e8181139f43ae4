"""Assemble reports/safety.json from the part reports (run from the repository root).

    python -m benchmarks.safety_summary

Malicious-target attacks keep their rates, thresholds, PPL and search settings (the per-target
triggers stay in reports/safety_malicious/*.json); FlatGD and the classifier are included whole.
"""

from __future__ import annotations

import json
from pathlib import Path

REPORTS = Path("reports")


def attack_summary(path: Path) -> dict[str, object]:
    r = json.loads(path.read_text())
    searches = {
        mode: {
            "rates": s["rates"],
            "seconds": s["seconds"],
            "mean_best_avg_logp": round(
                sum(o["avg_logp"] for o in s["outcomes"]) / len(s["outcomes"]), 4
            ),
        }
        for mode, s in r["searches"].items()
    }
    keep = ("bundle", "num_targets", "targets_file", "test_ppl", "lm_test_ppl", "thresholds")
    return {**{k: r.get(k) for k in keep}, "search": r["search"], "searches": searches}


def main() -> None:
    attacks = {
        p.stem: attack_summary(p) for p in sorted((REPORTS / "safety_malicious").glob("*.json"))
    }
    out = {
        "machine": "shared 2-core x86 CPU, 1 torch thread per process, no GPU",
        "malicious_targets": attacks,
        "flatgd": json.loads((REPORTS / "safety_flatgd.json").read_text()),
        "classifier": json.loads((REPORTS / "safety_classifier.json").read_text()),
    }
    (REPORTS / "safety.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote reports/safety.json ({len(attacks)} attack reports)")


if __name__ == "__main__":
    main()
