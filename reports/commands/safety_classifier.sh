#!/bin/sh
# reports/safety_classifier.{md,json}: the DiaSafety safety classifier of the service's output
# filter, both architectures fitted, the better on held-out train written to artifacts/.
set -eu
OMP_NUM_THREADS=1 python -m training train-safety-classifier --preset small \
  --data ../shared/data --out artifacts/safety-classifier --base artifacts/generator-standard \
  --architecture both --threads 1 --report reports/safety_classifier

# Measurements quoted in the report's notes (run after the command above; 1 torch thread):
# the benign flag rate of gold and generator-nd replies, and the filter's serving latency.
OMP_NUM_THREADS=1 python - <<'PY'
"""Flag rate of the safety filter on DailyDialog validation: gold replies and generator-nd greedy
replies (the service's default generator); 500 pairs, 1 torch thread."""
import json, torch
from pathlib import Path
from collections import Counter
torch.set_num_threads(1)
from models.safety import SafetyClassifier
from models.generator import GenerativeResponder
from training.core.data import load_splits
clf = SafetyClassifier.load(Path("artifacts/safety-classifier"))
gen = GenerativeResponder.load(Path("artifacts/generator-nd"))
val = load_splits(Path("../shared/data/dailydialog"), max_context_turns=1).validation[:500]
ctx = [e.context[-1] for e in val]
gold = [e.response for e in val]
greedy = []
for i in range(0, len(val), 50):
    greedy += gen.respond([[c] for c in ctx[i:i+50]])
out = {}
for name, replies in (("gold", gold), ("generator-nd greedy", greedy)):
    p = clf.unsafe_probability(ctx, replies)
    flagged = [r for r, x in zip(replies, p) if x >= clf.threshold]
    blocked = [r for r in replies if clf.blocklist.find(r)]
    out[name] = {"n": len(replies), "classifier_flag_rate": len(flagged) / len(replies), "blocklist_rate": len(blocked) / len(replies), "top_flagged": Counter(flagged).most_common(5)}
print(json.dumps(out, indent=2))
PY
OMP_NUM_THREADS=1 python - <<'PY'
"""Safety filter latency in-process: SafetyFilter.check on 1 and 16 replies, and POST /respond
p50 with the filter off vs auto (both), on the real small bundles; 1 torch thread."""
import statistics, time, json, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from fastapi.testclient import TestClient
from models.safety import SafetyClassifier
from service.app import create_app
from service.settings import Settings

clf = SafetyClassifier.load(Path("artifacts/safety-classifier"))
ctx = ["i think they all deserve it .", "can you help me with my homework ?"] * 8
rep = ["yes , you are right .", "sure , what subject ?"] * 8
out = {"classifier": clf.bundle_id, "architecture": clf.cfg.architecture}
for n in (1, 16):
    times = []
    for _ in range(200):
        t = time.perf_counter(); clf.unsafe_probability(ctx[:n], rep[:n]); times.append(time.perf_counter() - t)
    out[f"classifier_batch{n}_p50_ms"] = statistics.median(times) * 1000
for mode in ("off", "auto"):
    s = Settings(_env_file=None, models_dir=Path("artifacts"), device="cpu", safety_filter=mode, generative_bundle="generator-nd", retrieval_bundle="retriever-g2r")
    with TestClient(create_app(s)) as c:
        for backend in ("retrieval", "generative"):
            times = []
            for i in range(60):
                t = time.perf_counter()
                r = c.post("/respond", json={"context": [ctx[i % 2]], "backend": backend})
                times.append(time.perf_counter() - t)
                assert r.status_code == 200
            out[f"respond_{backend}_{mode}_p50_ms"] = statistics.median(times[10:]) * 1000
        m = c.get("/metrics").text
        out[f"safety_lines_{mode}"] = [l for l in m.splitlines() if l.startswith(("dialogue_safety_blocked_total", "dialogue_stage_duration_seconds_count{stage=\"safety\"}", "dialogue_stage_duration_seconds_sum{stage=\"safety\"}"))]
print(json.dumps(out, indent=2))
PY
