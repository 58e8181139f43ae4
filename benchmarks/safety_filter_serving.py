"""The output safety filter on real bundles: how often it flags ordinary replies, and what it costs
a request (the figures quoted in the notes of reports/safety_classifier.md).

    OMP_NUM_THREADS=1 python -m benchmarks.safety_filter_serving rates [--artifacts DIR]
    OMP_NUM_THREADS=1 python -m benchmarks.safety_filter_serving latency [--artifacts DIR]

``rates``: the classifier's and the blocklist's flag rates on 500 DailyDialog validation pairs,
for the gold replies and for the generator's greedy replies. ``latency``: the classifier's
in-process time on 1 and 16 replies, and POST /respond p50 per backend with the filter off and
on (``auto``), same run, 1 torch thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from models.generator import GenerativeResponder
from models.safety import SafetyClassifier
from training.config import DAILYDIALOG
from training.core.data import load_splits

_CONTEXTS = ["i think they all deserve it .", "can you help me with my homework ?"]
_REPLIES = ["yes , you are right .", "sure , what subject ?"]
_SAFETY_LINES = (
    "dialogue_safety_blocked_total",
    'dialogue_stage_duration_seconds_count{stage="safety"}',
    'dialogue_stage_duration_seconds_sum{stage="safety"}',
)


def flag_rates(
    artifacts: Path, data: Path, generator: str, n: int = 500, batch: int = 50
) -> dict[str, Any]:
    """Classifier and blocklist flag rates of gold and greedy replies to ``n`` validation pairs."""
    clf = SafetyClassifier.load(artifacts / "safety-classifier")
    gen = GenerativeResponder.load(artifacts / generator)
    val = load_splits(data, max_context_turns=1).validation[:n]
    contexts = [e.context[-1] for e in val]
    greedy: list[str] = []
    for i in range(0, len(val), batch):
        greedy += gen.respond([[c] for c in contexts[i : i + batch]])
    out: dict[str, Any] = {}
    for name, replies in (("gold", [e.response for e in val]), (f"{generator} greedy", greedy)):
        probs = clf.unsafe_probability(contexts, replies)
        flagged = [r for r, p in zip(replies, probs, strict=True) if p >= clf.threshold]
        blocked = [r for r in replies if clf.blocklist is not None and clf.blocklist.find(r)]
        out[name] = {
            "n": len(replies),
            "classifier_flag_rate": len(flagged) / len(replies),
            "blocklist_rate": len(blocked) / len(replies),
            "top_flagged": Counter(flagged).most_common(5),
        }
    return out


def serving_latency(
    artifacts: Path, generator: str, retriever: str, repeats: int = 200, requests: int = 60
) -> dict[str, Any]:
    """In-process classifier time and POST /respond p50 with the filter off vs auto."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    clf = SafetyClassifier.load(artifacts / "safety-classifier")
    contexts, replies = _CONTEXTS * 8, _REPLIES * 8
    out: dict[str, Any] = {"classifier": clf.bundle_id, "architecture": clf.cfg.architecture}
    for n in (1, 16):
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            clf.unsafe_probability(contexts[:n], replies[:n])
            times.append(time.perf_counter() - started)
        out[f"classifier_batch{n}_p50_ms"] = statistics.median(times) * 1000
    for mode in ("off", "auto"):
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            models_dir=artifacts,
            device="cpu",
            safety_filter=mode,
            generative_bundle=generator,
            retrieval_bundle=retriever,
        )
        with TestClient(create_app(settings)) as client:
            for backend in ("retrieval", "generative"):
                times = []
                for i in range(requests):
                    started = time.perf_counter()
                    r = client.post(
                        "/respond", json={"context": [_CONTEXTS[i % 2]], "backend": backend}
                    )
                    times.append(time.perf_counter() - started)
                    r.raise_for_status()
                # the first 10 are warm-up
                out[f"respond_{backend}_{mode}_p50_ms"] = statistics.median(times[10:]) * 1000
            metrics = client.get("/metrics").text
            out[f"safety_lines_{mode}"] = [
                line for line in metrics.splitlines() if line.startswith(_SAFETY_LINES)
            ]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["rates", "latency"])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--data", type=Path, default=DAILYDIALOG)
    parser.add_argument("--generator", default="generator-nd")
    parser.add_argument("--retriever", default="retriever-g2r")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.what == "rates":
        result = flag_rates(args.artifacts, args.data, args.generator)
    else:
        result = serving_latency(args.artifacts, args.generator, args.retriever)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
