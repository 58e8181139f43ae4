"""Bring your own generator (issue 15), measured in one run on this machine:

1. an imported Hugging Face BART of the ``small`` generator's dimensions (d_model 256, 4 heads,
   FFN 1024, 2+2 layers, vocab 4000; random weights, our small tokenizer) against our own small
   bundle, both loaded with ``models.generator.load_generator`` and called through the
   ``reply_each`` the service calls: latency at batch 1 (greedy, exactly 20 new tokens: EOS held
   off) and throughput at batch 32 (32 contexts per call), in process, 1 torch thread each (the
   service's default);
2. the same two bundles served over HTTP by ``python -m service`` (micro-batching on, as it runs by
   default), one after the other and alternating over ``--http-rounds`` rounds: the client's p50 at
   concurrency 1 and its throughput at concurrency 32 (``benchmarks.service_load``'s closed-loop
   load generator, the same exact-20-token greedy options in every request);
3. the remote arm's added overhead per request: a ``remote-openai`` bundle against a fake
   OpenAI-compatible server in another process on 127.0.0.1 that answers at once, so what is
   measured is the client (httpx, JSON, pooling) and the loopback, one request at a time and 32
   at once.

Times are medians over repeats after warm-up, the two generators called in alternation so that a
change of load hits both alike; ratios are against our bundle in the same run.
The load average is printed before and after (``uptime``): on a shared machine every figure is
slower than alone, and the ratios are what to read.

    python -m benchmarks.byo_generator --ours artifacts/generator-nt --out reports/byo_generator
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import write_report
from benchmarks.decoding import bart_like, median_seconds
from models.decoding import DecodingConfig
from models.generator import load_generator
from models.seq2seq import Seq2SeqConfig

NEW_TOKENS = 20
BATCH = 32


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def _contexts(data: Path, n: int) -> list[list[str]]:
    from models.text import normalize_text

    path = data / "test" / "dialogues_test.txt"
    turns: list[str] = []
    if path.is_file():
        with path.open(encoding="utf-8") as f:
            for line in f:
                turns += [normalize_text(t) for t in line.split("__eou__") if t.strip()]
                if len(turns) >= n:
                    break
    turns = turns or ["hello , how are you ?", "what time is it ?"]
    return [[turns[i % len(turns)]] for i in range(n)]


def build_hf_bart(ours_dir: Path, out: Path) -> Path:
    """A random-weight HF BART of our bundle's dimensions, with our tokenizer, imported."""
    import transformers

    from models.bundle import read_manifest
    from models.hf_generator import import_hf_model

    mc = read_manifest(ours_dir).model_config
    s = mc["seq2seq"]
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(ours_dir / "tokenizer.json"),
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    torch.manual_seed(0)
    bart = bart_like(Seq2SeqConfig.from_dict(s))
    # Random weights put the specials (<s> above all) first at every step; keep them out, as a
    # trained model would, so both sides decode 20 real tokens (the bundle keeps this setting).
    specials = ("<pad>", "<s>", "<unk>", "<sep>")
    bart.generation_config.suppress_tokens = [tok.convert_tokens_to_ids(t) for t in specials]
    src = out / "hf-src"
    bart.save_pretrained(src)
    tok.save_pretrained(src)
    inputs = mc["inputs"]
    import_hf_model(
        src,
        out / "hf-bart-small",
        max_context_turns=inputs["max_context_turns"],
        max_source_len=inputs["max_source_len"],
        decoding=DecodingConfig(max_length=NEW_TOKENS),
    )
    return out / "hf-bart-small"


def time_generators(
    gens: dict[str, Any], contexts: list[list[str]], repeats: int
) -> dict[str, dict[str, Any]]:
    """Median batch-1 and batch-32 times of each generator, measured in alternation (one call of
    each in turn, ``repeats`` rounds after two of warm-up), so a change of load hits all alike."""
    exact = DecodingConfig(max_length=NEW_TOKENS, min_length=NEW_TOKENS, no_repeat_ngram_size=0)
    one, batch = contexts[:1], contexts[:BATCH]
    calls = {
        "batch1": lambda g: g.reply_each(one, [exact]),
        "batch32": lambda g: g.reply_each(batch, [exact] * len(batch)),
    }
    times: dict[str, dict[str, list[float]]] = {n: {k: [] for k in calls} for n in gens}
    for case, call in calls.items():
        rounds = repeats if case == "batch1" else max(3, repeats // 4)
        for r in range(rounds + 2):
            for name, gen in gens.items():
                start = time.perf_counter()
                call(gen)
                if r >= 2:
                    times[name][case].append(time.perf_counter() - start)
    out: dict[str, dict[str, Any]] = {}
    for name, gen in gens.items():
        lengths = sorted({len(r[0].tokens) for r in calls["batch32"](gen)})
        t1 = statistics.median(times[name]["batch1"])
        tb = statistics.median(times[name]["batch32"])
        out[name] = {
            "batch1_ms": 1000 * t1,
            "batch32_ms": 1000 * tb,
            "batch32_replies_per_s": len(batch) / tb,
            "tokens_per_reply": lengths,
            "rounds": [len(times[name]["batch1"]), len(times[name]["batch32"])],
        }
    return out


HTTP_OPTIONS = {
    "strategy": "greedy",
    "max_length": NEW_TOKENS,
    "min_length": NEW_TOKENS,
    "no_repeat_ngram_size": 0,
}


async def _http_cells(
    base_url: str, contexts: list[list[str]], requests: dict[int, int]
) -> dict[int, dict[str, Any]]:
    """One server's cells: per concurrency, warm-up then ``requests[c]`` timed requests."""
    from benchmarks import service_load as sl

    out = {}
    for conc, n in requests.items():
        async with sl.make_client(base_url, conc) as client:
            cell = await sl.run_cell(
                client,
                "generative",
                contexts,
                concurrency=conc,
                requests=n,
                warmup=max(16, conc),
                options=HTTP_OPTIONS,
            )
        if cell.errors:
            raise RuntimeError(f"c={conc}: {cell.error_samples[:2]}")
        out[conc] = cell.summary()
    return out


def time_http(
    bundles: dict[str, Path], data: Path, rounds: int, requests: dict[int, int]
) -> dict[str, dict[str, Any]]:
    """Each bundle served alone by ``python -m service`` (defaults: micro-batching on, 1 thread),
    the bundles alternating for ``rounds`` rounds; per round and concurrency the client's p50 and
    throughput; returned as medians over rounds. ``requests``: timed requests per concurrency."""
    import asyncio

    from benchmarks import service_load as sl

    contexts = sl.load_contexts(data, 512, 3, 0)
    per: dict[str, dict[int, list[dict[str, float]]]] = {
        n: {c: [] for c in requests} for n in bundles
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in bundles.items():
            (Path(tmp) / name).symlink_to(path.resolve())
        for r in range(rounds):
            for name in bundles:
                args = sl.parse_args(
                    ["--models-dir", tmp, "--generative-bundle", name, "--backends", "generative"]
                )

                with sl.serve(args, args.max_batch) as base_url:
                    for conc, s in asyncio.run(_http_cells(base_url, contexts, requests)).items():
                        per[name][conc].append(s)
                        print(
                            f"  http round {r} {name:5s} c={conc:<3d} p50={s['p50_ms']:.1f} ms "
                            f"{s['throughput_rps']:.1f} req/s",
                            file=sys.stderr,
                            flush=True,
                        )
    return {
        name: {
            f"c{conc}": {
                "p50_ms": statistics.median(s["p50_ms"] for s in runs),
                "p99_ms": statistics.median(s["p99_ms"] for s in runs),
                "throughput_rps": statistics.median(s["throughput_rps"] for s in runs),
                "requests": requests[conc],
                "rounds": len(runs),
            }
            for conc, runs in by_conc.items()
        }
        for name, by_conc in per.items()
    }


# --- the fake OpenAI-compatible server (run in its own process) ------------------------------


def serve_fake(port_file: Path) -> None:
    """Answer every chat completion at once with a fixed reply; write the port, serve for ever."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    reply = json.dumps(
        {
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "i am fine , thanks ."}}
            ],
            "usage": {"completion_tokens": 7},
        }
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # as real servers do: no 40 ms delayed-ACK stalls

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    port_file.write_text(str(server.server_address[1]))
    server.serve_forever()


def time_remote(work: Path, contexts: list[list[str]], repeats: int) -> dict[str, float]:
    from models.remote_generator import import_remote

    port_file = work / "port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.byo_generator", "--serve-fake", str(port_file)]
    )
    try:
        for _ in range(200):
            if port_file.is_file() and port_file.read_text():
                break
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port_file.read_text()}/v1"
        import_remote(work / "remote-fake", url=url, model="fake", max_concurrency=BATCH)
        gen = load_generator(work / "remote-fake")
        cfg = gen.decoding
        batch = contexts[:BATCH]
        t1 = median_seconds(lambda: gen.reply_each(contexts[:1], [cfg]), repeats * 5, warmup=5)
        tb = median_seconds(lambda: gen.reply_each(batch, [cfg] * len(batch)), repeats, warmup=2)
        return {
            "remote_batch1_ms": 1000 * t1,
            "remote_batch32_ms": 1000 * tb,
            "remote_batch32_ms_per_request": 1000 * tb / len(batch),
        }
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def markdown(result: dict[str, Any]) -> str:
    ours, hf, remote, meta = result["ours"], result["hf"], result["remote"], result["meta"]
    lines = [
        "# Bring your own generator: an imported HF BART vs our bundle, and the remote arm",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {meta['machine']}, torch {meta['torch']}, transformers "
        f"{meta['transformers']}, {meta['torch_threads']} torch thread(s).",
        f"Load before: `{meta['uptime_before']}`; after: `{meta['uptime_after']}`"
        f" ({meta['shared']}).",
        "",
        f"Both generators have the `small` preset's dimensions ({meta['dims']}); the HF one is a "
        "random-weight `BartForConditionalGeneration` imported with `python -m training "
        "import-hf`, ours is `" + meta["ours"] + "`. Both are called through `reply_each` (what "
        f"the service calls), greedy, exactly {NEW_TOKENS} new tokens (EOS held off), in process, "
        "medians after warm-up, the two measured in alternation.",
        "",
        "| generator | batch 1 (ms) | batch 32 (ms) | batch 32 (replies/s) | vs ours, batch 1 "
        "| vs ours, batch 32 throughput |",
        "|---|---:|---:|---:|---:|---:|",
        f"| ours (`{meta['ours']}`) | {ours['batch1_ms']:.1f} | {ours['batch32_ms']:.1f} | "
        f"{ours['batch32_replies_per_s']:.1f} | 1.00x | 1.00x |",
        f"| HF BART, imported | {hf['batch1_ms']:.1f} | {hf['batch32_ms']:.1f} | "
        f"{hf['batch32_replies_per_s']:.1f} | {hf['batch1_ms'] / ours['batch1_ms']:.2f}x time | "
        f"{hf['batch32_replies_per_s'] / ours['batch32_replies_per_s']:.2f}x |",
        "",
        *http_lines(result.get("http"), meta),
        "Remote arm against a fake OpenAI-compatible server (another process, 127.0.0.1, answers "
        "at once): the client's own cost per request.",
        "",
        "| remote arm | ms |",
        "|---|---:|",
        f"| one request at a time | {remote['remote_batch1_ms']:.2f} |",
        f"| 32 at once (whole batch) | {remote['remote_batch32_ms']:.2f} |",
        f"| 32 at once, per request | {remote['remote_batch32_ms_per_request']:.2f} |",
        f"| as a share of our batch-1 generation | "
        f"{remote['remote_batch1_ms'] / ours['batch1_ms']:.1%} |",
        "",
    ]
    return "\n".join(lines)


def http_lines(http: dict[str, Any] | None, meta: dict[str, Any]) -> list[str]:
    if not http:
        return []
    ours, hf = http["ours"], http["hf"]
    c1, c32 = ours["c1"], ours["c32"]
    return [
        f"Over HTTP: each bundle served alone by `python -m service` (micro-batching on, its "
        f"default; 1 torch thread), the two alternating over {c1['rounds']} rounds, medians of the "
        f"rounds; {c1['requests']} timed requests at concurrency 1 and {c32['requests']} at 32 "
        "per round, every one asking for exactly "
        f"{NEW_TOKENS} greedy tokens (`{json.dumps(HTTP_OPTIONS)}`); the load generator "
        "(`benchmarks.service_load`) shares the 2 cores.",
        "",
        "| generator | c=1 p50 (ms) | c=1 req/s | c=32 p50 (ms) | c=32 p99 (ms) | c=32 req/s "
        "| vs ours, c=1 p50 | vs ours, c=32 throughput |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| ours (`{meta['ours']}`) | {c1['p50_ms']:.1f} | {c1['throughput_rps']:.1f} | "
        f"{c32['p50_ms']:.1f} | {c32['p99_ms']:.1f} | {c32['throughput_rps']:.1f} | 1.00x | 1.00x |",
        f"| HF BART, imported | {hf['c1']['p50_ms']:.1f} | {hf['c1']['throughput_rps']:.1f} | "
        f"{hf['c32']['p50_ms']:.1f} | {hf['c32']['p99_ms']:.1f} | "
        f"{hf['c32']['throughput_rps']:.1f} | {hf['c1']['p50_ms'] / c1['p50_ms']:.2f}x time | "
        f"{hf['c32']['throughput_rps'] / c32['throughput_rps']:.2f}x |",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ours", type=Path, default=Path("artifacts/generator-nt"))
    p.add_argument("--data", type=Path, default=Path("../shared/data/dailydialog"))
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--http-rounds", type=int, default=3, help="0: skip the HTTP measurement")
    p.add_argument("--http-requests", type=int, nargs=2, default=[128, 384], metavar=("C1", "C32"))
    p.add_argument("--out", type=Path, help="writes <out>.json and <out>.md")
    p.add_argument("--serve-fake", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_fake:
        serve_fake(args.serve_fake)
        return 0
    import transformers

    torch.set_num_threads(1)
    before = _uptime()
    print(before, file=sys.stderr, flush=True)
    contexts = _contexts(args.data, BATCH)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        hf_dir = build_hf_bart(args.ours, work)
        ours = load_generator(args.ours)
        hf = load_generator(hf_dir)
        result: dict[str, Any] = time_generators({"ours": ours, "hf": hf}, contexts, args.repeats)
        print(json.dumps(result), file=sys.stderr, flush=True)
        if args.http_rounds:
            result["http"] = time_http(
                {"ours": args.ours, "hf": hf_dir},
                args.data,
                args.http_rounds,
                {1: args.http_requests[0], 32: args.http_requests[1]},
            )
            print(json.dumps({"http": result["http"]}), file=sys.stderr, flush=True)
        result["remote"] = time_remote(work, contexts, args.repeats)
        print(json.dumps({"remote": result["remote"]}), file=sys.stderr, flush=True)
    after = _uptime()
    print(after, file=sys.stderr, flush=True)
    load = os.getloadavg()[0]
    from models.bundle import read_manifest

    s = read_manifest(args.ours).model_config["seq2seq"]
    result["meta"] = {
        "command": "python -m benchmarks.byo_generator " + " ".join(argv or sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "uptime_before": before,
        "uptime_after": after,
        "shared": (
            f"shared: the 1-minute load {load:.2f} exceeds this run's one busy core"
            if load > 1.5
            else "the machine was close to idle"
        ),
        "dims": f"d_model {s['d_model']}, {s['n_heads']} heads, FFN {s['d_ff']}, "
        f"{s['n_encoder_layers']}+{s['n_decoder_layers']} layers, vocab {s['vocab_size']}",
        "ours": str(args.ours),
    }
    text = markdown(result)
    print(text)
    write_report(args.out, result, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
