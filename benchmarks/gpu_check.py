"""GPU check (issue 17, item 6): half precision, continuous batching and speed on a CUDA device.

Run it whenever a GPU machine is at hand (``make gpu-check``); CI never depends on it. Without a
CUDA device it says so and exits 0. In a few minutes it:

1. loads every generator bundle in ``--artifacts`` (ours; others are skipped) in fp32 and in
   half precision (fp16, as the service serves on CUDA) and decodes ``--contexts`` DailyDialog
   test contexts greedily with the bundle's own decoding config in both: the replies must be
   the same tokens. A reply that differs is explained only when fp32's top-2 logit margin at
   the first differing token is below ``--tie-margin`` (a near tie that half precision may
   flip); any other difference fails the check (exit 1);
2. decodes the same contexts through the continuous decoder (models/continuous.py, requests
   admitted over the first steps) in half precision: the same tokens as batch decoding;
3. times 20-token greedy generation (min = max = 20 tokens) at batch 1 (p50 over ``--repeats``)
   and at batch 64 (replies/s and tokens/s), batch decoding and continuous decoding, for the
   served ``small`` bundle and a ``paper``-sized random-weight model (training/config:
   6+6 layers, d=512, vocab 16000) in half precision;
4. where FAISS has GPU support, times exact inner-product search over the retriever bundle's
   response vectors on the GPU against the CPU (batch 1 p50, batch 64 queries/s) and checks the
   top-10 ids agree.

Everything goes to ``<out>.json`` (and a short ``<out>.md``)::

    make gpu-check                       # = python -m benchmarks.gpu_check --out reports/gpu_check
    python -m benchmarks.gpu_check --artifacts artifacts --data ../shared/data/dailydialog

``--device cpu --dtype bfloat16`` runs the same steps on the CPU (a dry run of the script, with
small ``--contexts``/``--repeats``/``--batch``); nothing is measured that way worth keeping.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from benchmarks import write_report
from models.bundle import read_manifest
from models.continuous import decode_continuously
from models.decoding import ContextFreePrior, DecodingConfig, anti_lm_scores, generate
from models.generator import GenerativeResponder
from models.seq2seq import Seq2SeqTransformer
from training.config import DAILYDIALOG

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
TOKENS = 20  # generated tokens per reply in the timings


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--artifacts", type=Path, default=ROOT / "artifacts")
    p.add_argument("--data", type=Path, default=DAILYDIALOG)
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "gpu_check")
    p.add_argument("--contexts", type=int, default=100, help="test contexts for the fp16 check")
    p.add_argument("--repeats", type=int, default=20, help="timed runs at batch 1")
    p.add_argument("--batch", type=int, default=64, help="the throughput batch")
    p.add_argument("--sizes", default="small,paper", help="comma list of small, paper")
    p.add_argument("--tie-margin", type=float, default=0.05)
    p.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a dry run)")
    p.add_argument("--dtype", default="float16", choices=sorted(DTYPES))
    return p.parse_args(argv)


# --- pieces (device-agnostic, tested on the CPU) --------------------------------------------------


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """The first position where two token lists differ (a length difference counts), or None."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


@torch.inference_mode()
def top2_margin(
    model: Seq2SeqTransformer,
    src: torch.Tensor,
    prefix: Sequence[int],
    cfg: DecodingConfig | None = None,
    prior: ContextFreePrior | None = None,
) -> float:
    """fp32 margin between the two best next tokens after ``prefix`` (one source), by the score
    greedy decoding chooses with: the logits, less MMI-antiLM's penalty where ``cfg`` applies it
    at this position (the log-softmax's normaliser cancels in a difference)."""
    tgt = torch.tensor([[model.cfg.bos_id, *prefix]], device=src.device)
    scores = model(src, tgt).logits[0, -1].float().log_softmax(dim=-1)
    if cfg is not None:
        scores = anti_lm_scores(scores[None], [list(prefix)], [cfg], prior)[0]
    top = scores.topk(2).values
    return float(top[0] - top[1])


def compare_precisions(
    reference: GenerativeResponder,
    half: GenerativeResponder,
    contexts: list[list[str]],
    tie_margin: float,
) -> dict[str, Any]:
    """Greedy replies of the same bundle in fp32 and in half precision (batched, the bundle's
    own decoding config), and of the continuous decoder in half precision."""
    cfg = reference.decoding.with_overrides(strategy="greedy", num_return_sequences=1)
    src32 = reference.encode_contexts(contexts)
    src16 = half.encode_contexts(contexts)
    # a bundle served with anti-LM decoding (DecodingConfig.anti_lm) brings its own prior
    prior32 = reference.prior if cfg.anti_lm > 0 else None
    prior16 = half.prior if cfg.anti_lm > 0 else None
    full = generate(reference.model, src32, cfg, prior=prior32).tokens
    halved = generate(half.model, src16, cfg, prior=prior16).tokens
    sources = [row[row.ne(half.model.cfg.pad_id)].tolist() for row in src16]
    continuous = decode_continuously(
        half.model,
        sources,
        [cfg] * len(sources),
        arrivals=[i % 8 for i in range(len(sources))],  # joining a running batch
        prior=prior16,
    )
    differing = []
    for i, (a, b) in enumerate(zip(full, halved, strict=True)):
        at = first_difference(a, b)
        if at is None:
            continue
        margin = top2_margin(reference.model, src32[i : i + 1], a[:at], cfg, prior32)
        differing.append({"context": i, "position": at, "fp32_top2_margin": margin})
    unexplained = [d for d in differing if d["fp32_top2_margin"] >= tie_margin]
    continuous_same = sum(g.tokens[0] == t for g, t in zip(continuous, halved, strict=True))
    return {
        "contexts": len(contexts),
        "same_as_fp32": len(contexts) - len(differing),
        "differing": differing,
        "unexplained": len(unexplained),
        "continuous_same_as_batch": continuous_same,
        "ok": not unexplained and continuous_same == len(contexts),
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> list[float]:
    """Seconds of ``repeats`` calls after one warm-up call."""
    fn()
    synchronize(device)
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        synchronize(device)
        out.append(time.perf_counter() - started)
    return out


def speed(
    model: Seq2SeqTransformer, sources: torch.Tensor, repeats: int, batch: int
) -> dict[str, Any]:
    """20-token greedy generation: p50 at batch 1, throughput at ``batch`` (batch decoding and
    the continuous decoder with every request admitted at step 0)."""
    device = sources.device
    cfg = DecodingConfig(max_length=TOKENS, min_length=TOKENS, no_repeat_ngram_size=0)
    rows = sources.repeat((batch + sources.size(0) - 1) // sources.size(0), 1)[:batch]
    ids = [row[row.ne(model.cfg.pad_id)].tolist() for row in rows]
    one = timed(lambda: generate(model, rows[:1], cfg), device, repeats)
    full = timed(lambda: generate(model, rows, cfg), device, max(3, repeats // 4))
    cont = timed(
        lambda: decode_continuously(model, ids, [cfg] * batch, max_rows=batch),
        device,
        max(3, repeats // 4),
    )
    return {
        "batch1_p50_ms": 1000 * statistics.median(one),
        "batch1_tokens_per_s": TOKENS / statistics.median(one),
        f"batch{batch}_replies_per_s": batch / statistics.median(full),
        f"batch{batch}_tokens_per_s": batch * TOKENS / statistics.median(full),
        f"continuous_batch{batch}_replies_per_s": batch / statistics.median(cont),
    }


def paper_model(device: torch.device, dtype: torch.dtype) -> Seq2SeqTransformer:
    """A random-weight generator of the ``paper`` preset's shape."""
    from training.config import get_preset  # the benchmark may use training/; the service not

    preset = get_preset("paper")
    cfg = preset.generator.model
    cfg = type(cfg).from_dict({**cfg.to_dict(), "vocab_size": preset.vocab_size})
    torch.manual_seed(0)
    return Seq2SeqTransformer(cfg).eval().to(device=device, dtype=dtype)


@functools.cache
def dialogue_contexts(data: Path, turns: int, n: int) -> list[list[str]]:
    """The first ``n`` DailyDialog test contexts (the last ``turns`` turns of each)."""
    from training.core.data import load_splits

    splits = load_splits(data, max_context_turns=turns)
    return [list(example.context) for example in splits.test[:n]]


def faiss_check(retriever_dir: Path, batch: int, repeats: int) -> dict[str, Any]:
    """Exact search over the bundle's response vectors, GPU against CPU."""
    import faiss
    import numpy as np

    from models.index import gpu_faiss_available

    if not gpu_faiss_available():
        return {"skipped": "faiss has no GPU support here (faiss-cpu); install faiss-gpu"}
    from models.retriever import RetrievalResponder

    responder = RetrievalResponder.load(retriever_dir, "cpu", None)
    vectors = np.ascontiguousarray(responder.index.vectors(), dtype=np.float32)
    rng = np.random.default_rng(0)
    queries = vectors[rng.choice(len(vectors), size=min(batch, len(vectors)), replace=False)]
    on_cpu = faiss.IndexFlatIP(vectors.shape[1])
    on_cpu.add(vectors)
    on_gpu = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, on_cpu)
    cpu_ids = on_cpu.search(queries, 10)[1]
    gpu_ids = on_gpu.search(queries, 10)[1]
    cpu = torch.device("cpu")
    out: dict[str, Any] = {"vectors": int(vectors.shape[0]), "dim": int(vectors.shape[1])}
    for name, index in (("cpu", on_cpu), ("gpu", on_gpu)):

        def search(q: Any, index: Any = index) -> object:
            return index.search(q, 10)

        one = timed(lambda: search(queries[:1]), cpu, repeats)
        full = timed(lambda: search(queries), cpu, 5)
        out[f"{name}_batch1_p50_ms"] = 1000 * statistics.median(one)
        out[f"{name}_batch{len(queries)}_queries_per_s"] = len(queries) / statistics.median(full)
    out["top10_same"] = float((cpu_ids == gpu_ids).all(axis=1).mean())
    return out


# --- the run --------------------------------------------------------------------------------------


def generator_bundles(artifacts: Path) -> list[Path]:
    """Our own generator bundles in ``artifacts`` (served first when serving.json names one)."""
    found = []
    for manifest in sorted(artifacts.glob("*/manifest.json")):
        m = read_manifest(manifest.parent)
        if m.kind == GenerativeResponder.kind and m.architecture is None:
            found.append(manifest.parent)
    served = artifacts / "serving.json"
    if served.is_file():
        name = json.loads(served.read_text()).get("generative")
        found.sort(key=lambda p: p.name != name)
    return found


def run(args: argparse.Namespace) -> int:
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False): skipped.")
        print(
            "Run it on a GPU machine: make gpu-check (CUDA torch: see `make setup TORCH_SPEC=...`)."
        )
        return 0
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    bundles = generator_bundles(args.artifacts)
    if not bundles:
        print(f"gpu_check: no generator bundle in {args.artifacts}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": args.dtype,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "precision": {},
        "speed": {},
    }
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    small_sources: torch.Tensor | None = None
    for path in bundles:
        reference = GenerativeResponder.load(path, device, None)
        half = GenerativeResponder.load(path, device, dtype)
        contexts = dialogue_contexts(args.data, reference.inputs.max_context_turns, args.contexts)
        check = compare_precisions(reference, half, contexts, args.tie_margin)
        results["precision"][path.name] = check
        print(
            f"{path.name}: {check['same_as_fp32']}/{check['contexts']} greedy replies as fp32 "
            f"({check['unexplained']} not near a tie); continuous = batch on "
            f"{check['continuous_same_as_batch']}/{check['contexts']}"
        )
        if small_sources is None and "small" in sizes:
            small_sources = half.encode_contexts(contexts)
            results["speed"]["small"] = {"bundle": path.name} | speed(
                half.model, small_sources, args.repeats, args.batch
            )
            print(f"small ({path.name}): {json.dumps(results['speed']['small'])}")
        del reference, half
    if "paper" in sizes:
        model = paper_model(device, dtype)
        g = torch.Generator().manual_seed(0)
        sources = torch.randint(5, model.cfg.vocab_size, (args.batch, 24), generator=g).to(device)
        results["speed"]["paper"] = {
            "model": asdict(model.cfg),
            "parameters": model.num_parameters(),
        } | speed(model, sources, args.repeats, args.batch)
        print(f"paper (random weights): {json.dumps(results['speed']['paper'] | {'model': '...'})}")
        del model
    retriever = args.artifacts / "retriever-g2r"
    if (retriever / "manifest.json").is_file():
        results["faiss"] = faiss_check(retriever, args.batch, args.repeats)
        print(f"faiss: {json.dumps(results['faiss'])}")
    results["seconds"] = time.perf_counter() - started
    ok = all(c["ok"] for c in results["precision"].values())
    results["ok"] = ok
    write_report(args.out, results, markdown(results))
    print(f"gpu_check: {'ok' if ok else 'FAILED'} in {results['seconds']:.0f} s -> {args.out}.json")
    return 0 if ok else 1


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"# GPU check ({results['device']}, {results['dtype']}, torch {results['torch']})",
        "",
        "Written by `python -m benchmarks.gpu_check` (`make gpu-check`); figures in the JSON.",
        "",
        "| bundle | greedy = fp32 | differing, not near a tie | continuous = batch |",
        "|---|---:|---:|---:|",
    ]
    for name, c in results["precision"].items():
        lines.append(
            f"| {name} | {c['same_as_fp32']}/{c['contexts']} | {c['unexplained']} "
            f"| {c['continuous_same_as_batch']}/{c['contexts']} |"
        )
    lines += ["", "| size | figure | value |", "|---|---|---:|"]
    for size, figures in results["speed"].items():
        for key, value in figures.items():
            if isinstance(value, float):
                lines.append(f"| {size} | {key} | {value:.1f} |")
    if "faiss" in results:
        lines += ["", f"FAISS: `{json.dumps(results['faiss'])}`"]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
