"""The training time every bundle of a build recorded in its manifest (``training.wall_time_s``),
summed: the wall time of a build that ran across sessions (stage by stage, resumed), when no
single ``build`` run timed it end to end.

    python -m benchmarks.stage_times --artifacts artifacts-base --out reports/stage_times_base

Each figure is what that stage's own run measured (a resumed run adds up its pieces), under
whatever load the machine had then; stages that leave no bundle (data, D_N, the choice of the
served generator, the final evaluation) and G2R's augmentation when the manifest does not carry it
are listed as not recorded. Bundles trained with another preset than the one named are left out.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import write_report
from models.bundle import find_bundles, read_manifest
from training.eval.tables import markdown_table


def stage_times(artifacts: Path, preset: str | None = None) -> dict[str, Any]:
    """Per bundle: kind, steps, stop reason and recorded wall seconds; and their sum."""
    rows = []
    for bundle in find_bundles(artifacts):
        manifest = read_manifest(bundle)
        training = manifest.training
        if preset is not None and training.get("preset") != preset:
            continue
        seconds = training.get("wall_time_s")
        rows.append(
            {
                "bundle": bundle.name,
                "kind": manifest.kind,
                "preset": training.get("preset"),
                "method": training.get("method"),
                "steps": training.get("steps"),
                "stop_reason": training.get("stop_reason"),
                "wall_time_s": float(seconds) if isinstance(seconds, int | float) else None,
            }
        )
    recorded = [r["wall_time_s"] for r in rows if r["wall_time_s"] is not None]
    return {
        "artifacts": str(artifacts),
        "preset": preset,
        "bundles": rows,
        "recorded_s": sum(recorded),
        "not_recorded": [r["bundle"] for r in rows if r["wall_time_s"] is None],
    }


def render(result: dict[str, Any], command: str) -> str:
    def minutes(s: float | None) -> str:
        return "not recorded" if s is None else f"{s / 60:.1f}"

    lines = [
        f"# Training time recorded by the bundles in {result['artifacts']}",
        "",
        f"Command: `{command}`",
        "",
        markdown_table(
            ["bundle", "kind", "method", "steps", "stop", "minutes"],
            [
                [
                    r["bundle"],
                    r["kind"],
                    r["method"] or "-",
                    "-" if r["steps"] is None else str(r["steps"]),
                    r["stop_reason"] or "-",
                    minutes(r["wall_time_s"]),
                ]
                for r in result["bundles"]
            ],
        ),
        "",
        f"Sum of the recorded training times: **{result['recorded_s'] / 60:.1f} min** "
        f"({result['recorded_s'] / 3600:.2f} h). Not in it: the data, D_N, selection and "
        "evaluation stages, and any bundle listed as not recorded.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--artifacts", type=Path, required=True)
    p.add_argument("--preset", help="only bundles built with this preset")
    p.add_argument("--out", type=Path, help="writes <out>.json and <out>.md")
    args = p.parse_args(argv)
    command = "python -m benchmarks.stage_times " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    result = stage_times(args.artifacts, args.preset)
    text = render(result, command)
    print(text)
    write_report(args.out, result, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
