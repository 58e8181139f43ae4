"""Schema fuzzing of ``python -m service`` with schemathesis, every check on, seed and example count
fixed: is the OpenAPI schema the contract (no 5xx, no undocumented status, no refusal of a request
the schema allows, no acceptance of one it forbids, 405s with Allow, auth enforced)?

Starts ``python -m service`` on a free 127.0.0.1 port with the given bundles (and an admin token,
so ``POST /admin/reload`` is fuzzed too, with and without the credential), runs

    schemathesis run <url>/openapi.json --checks all --mode all --seed S --max-examples N
        --workers 1 --continue-on-failure -H "Authorization: Bearer <token>"

and writes its JSON report plus a summary (cases generated, cases with failures, unique failures,
errors). Exits non-zero when schemathesis found anything.

    .venv/bin/python -m benchmarks.service_fuzz --models-dir artifacts --out reports/reliability_fuzz
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def schemathesis_command() -> str:
    """The schemathesis CLI of this interpreter's environment (the `dev` extra installs it)."""
    beside = Path(sys.executable).with_name("schemathesis")
    found = str(beside) if beside.exists() else shutil.which("schemathesis")
    if found is None:
        raise FileNotFoundError("schemathesis is not installed (pip install -e '.[dev]')")
    return found


def fuzz(
    models_dir: Path,
    *,
    seed: int = 1,
    max_examples: int = 1000,
    report_path: Path,
    extra_env: dict[str, str] | None = None,
    startup_timeout_s: float = 180.0,
) -> dict[str, Any]:
    """Serve ``models_dir``, fuzz it, stop it; returns schemathesis' JSON report with our
    summary under ``"summary"`` (and the CLI's output under ``"output"``)."""
    from benchmarks.service_load import free_port, wait_ready

    report_path = Path(report_path).resolve()  # schemathesis runs in its folder
    token = "fuzz-" + secrets.token_hex(16)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALOGUE_")}
    env.update(
        {
            "DIALOGUE_MODELS_DIR": str(Path(models_dir).resolve()),
            "DIALOGUE_HOST": "127.0.0.1",
            "DIALOGUE_PORT": str(port),
            "DIALOGUE_ADMIN_TOKEN": token,
            "DIALOGUE_LOG_LEVEL": "error",
            "DIALOGUE_DEVICE": "cpu",
        }
    )
    env.update(extra_env or {})
    report_path.parent.mkdir(parents=True, exist_ok=True)
    base_url = f"http://127.0.0.1:{port}"
    command = [
        schemathesis_command(),
        "run",
        f"{base_url}/openapi.json",
        "--checks",
        "all",
        "--mode",
        "all",
        "--seed",
        str(seed),
        "--max-examples",
        str(max_examples),
        "--workers",
        "1",
        "--continue-on-failure",
        "--no-color",
        "-H",
        f"Authorization: Bearer {token}",
        "--report",
        "json",
        "--report-json-path",
        str(report_path),
        # no example database left behind (a fixed seed makes the run repeatable anyway)
        "--generation-database",
        "none",
    ]
    with tempfile.TemporaryFile(mode="w+") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_ready(server, base_url, startup_timeout_s, log)
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as scratch:  # schemathesis' own files
                run = subprocess.run(
                    command, cwd=scratch, capture_output=True, text=True, check=False
                )
            wall_s = time.perf_counter() - started
        finally:
            server.terminate()
            server.wait(timeout=60)
        log.seek(0)
        server_log = log.read()
    report: dict[str, Any] = json.loads(report_path.read_text())
    cases = report["test_cases"]
    report["summary"] = {
        "command": " ".join(
            "Authorization: Bearer <token>" if token in c else c.replace(f"{ROOT}/", "")
            for c in command
        ).replace(f":{port}/", ":<port>/"),
        "exit_code": run.returncode,
        "cases_generated": cases["generated"],
        "cases_with_failures": cases["with_failures"],
        "unique_failures": cases["unique_failures"],
        "errored": cases["errored"] + len(report.get("errors", [])),
        "wall_s": round(wall_s, 1),
        # a trace in the server log would be a 500 schemathesis saw; counted separately anyway
        "server_tracebacks": server_log.count("Traceback"),
    }
    report["output"] = run.stdout[-20000:] + run.stderr[-5000:]
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=ROOT / "artifacts")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-examples", type=int, default=1000)
    parser.add_argument("--out", type=Path, required=True, help="writes <out>.json and <out>.txt")
    args = parser.parse_args(argv)
    report = fuzz(
        args.models_dir,
        seed=args.seed,
        max_examples=args.max_examples,
        report_path=args.out.with_suffix(".json"),
    )
    summary = report["summary"]
    text = report["output"] + "\n" + json.dumps(summary, indent=2) + "\n"
    args.out.with_suffix(".txt").write_text(text)
    report.pop("output")
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    found = summary["cases_with_failures"] or summary["errored"] or summary["exit_code"]
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
