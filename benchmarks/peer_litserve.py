"""The peer server of benchmarks/peer.py: LitServe serving one of this project's bundles through
``GenerativeResponder`` / ``RetrievalResponder``, as a user who picked LitServe instead of this
service would write it. Needs ``litserve`` (the ``bench`` extra); imported only by the peer.

POST /respond takes ``{"context": [turns]}`` (other fields ignored) and answers ``{"response",
"backend", "model"}``, so benchmarks/service_load.py's load generator drives it as it drives the
service. With ``max_batch_size`` > 1 LitServe's dynamic batching collects up to that many
requests, waiting at most ``batch_timeout`` seconds, and ``predict`` gets them as one list.

    python -m benchmarks.peer_litserve --backend retrieval --bundle artifacts/retriever-g2r \\
        --port 8001 --max-batch 16 --batch-timeout-ms 5
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import litserve as ls

API_PATH = "/respond"


class ResponderAPI(ls.LitAPI):
    """One bundle behind LitServe (module level: LitServe may pickle it into its workers)."""

    def __init__(
        self,
        backend: str,
        bundle_dir: str | Path,
        threads: int = 1,
        max_batch_size: int = 1,
        batch_timeout: float = 0.0,
        dtype: str = "float32",
    ) -> None:
        super().__init__(
            max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=API_PATH
        )
        if backend not in ("generative", "retrieval"):
            raise ValueError(f"backend must be generative or retrieval, not {backend!r}")
        self.backend = backend
        self.bundle_dir = str(bundle_dir)
        self.threads = threads
        self.dtype = dtype
        self.model_id = ""

    def setup(self, device: Any) -> None:
        import torch

        torch.set_num_threads(self.threads)
        if self.backend == "generative":
            from models.generator import GenerativeResponder

            self.generator = GenerativeResponder.load(
                Path(self.bundle_dir), "cpu", getattr(torch, self.dtype)
            )
            # as the service does: one reply per request, the bundle's own decoding
            self.decoding = self.generator.decoding.with_overrides(num_return_sequences=1)
            self.model_id = str(self.generator.bundle_id)
        else:
            from models.retriever import RetrievalResponder

            self.retriever = RetrievalResponder.load(
                Path(self.bundle_dir), "cpu", getattr(torch, self.dtype)
            )
            self.model_id = str(self.retriever.bundle_id)

    # No annotation on request: LitServe reads it to build the route (a string annotation, as
    # __future__.annotations makes them, would turn the body into a query parameter).
    def decode_request(self, request):
        from models.text import normalize_text

        return [normalize_text(str(turn)) for turn in request["context"]]

    def _replies(self, contexts: Sequence[Sequence[str]]) -> list[str]:
        if self.backend == "generative":
            return list(self.generator.respond(contexts, self.decoding))
        return [hits[0][0] for hits in self.retriever.respond(contexts, top_k=1)]

    def predict(self, x: Any) -> Any:
        if self.max_batch_size > 1:  # a list of decoded requests
            return self._replies(list(x))
        return self._replies([x])[0]

    def encode_response(self, output: Any) -> dict[str, Any]:
        return {"response": output, "backend": self.backend, "model": self.model_id}


def build_server(
    backend: str,
    bundle_dir: str | Path,
    *,
    threads: int = 1,
    dtype: str = "float32",
    max_batch: int = 1,
    batch_timeout_s: float = 0.0,
    timeout_s: float = 300.0,
) -> Any:
    api = ResponderAPI(
        backend,
        bundle_dir,
        threads=threads,
        dtype=dtype,
        max_batch_size=max_batch,
        batch_timeout=batch_timeout_s if max_batch > 1 else 0.0,
    )
    return ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, timeout=timeout_s)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--backend", choices=("generative", "retrieval"), required=True)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--max-batch", type=int, default=1, help="1 = no batching")
    p.add_argument("--batch-timeout-ms", type=float, default=5.0)
    p.add_argument("--log-level", default="warning")
    args = p.parse_args(argv)
    server = build_server(
        args.backend,
        args.bundle,
        threads=args.threads,
        dtype=args.dtype,
        max_batch=args.max_batch,
        batch_timeout_s=args.batch_timeout_ms / 1000.0,
    )
    server.run(
        host="127.0.0.1",
        port=args.port,
        num_api_servers=1,
        log_level=args.log_level,
        generate_client_file=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
