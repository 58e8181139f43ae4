"""Bring-your-own-generator commands of ``python -m training``:

import-hf      a local Hugging Face model directory (safetensors) -> a checksummed generator bundle
import-remote  an OpenAI-compatible chat endpoint -> a generator bundle that names it (no key)

The bundles load wherever a generator bundle does: the service (GENERATIVE_BUNDLE, an A/B arm),
``reply``, and as the G2R teacher of ``augment`` / ``train-retriever``. Formats: models/bundle.py,
models/hf_generator.py, models/remote_generator.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from training.cli.common import print_manifest


def _add_decoding(p: argparse.ArgumentParser, max_tokens: int) -> None:
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=max_tokens,
        help=f"default reply length cap in tokens (default {max_tokens}; a request may lower it)",
    )
    p.add_argument("--strategy", choices=["greedy", "sample", "beam"], default="greedy")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling only")
    p.add_argument("--top-p", type=float, default=1.0, help="sampling only")
    p.add_argument("--top-k", type=int, default=0, help="sampling only; 0 = off")
    p.add_argument("--beam-size", type=int, default=4, help="beam only")
    p.add_argument("--no-repeat-ngram-size", type=int, default=0, help="0 = off")


def _decoding(args: argparse.Namespace) -> Any:
    from models.decoding import DecodingConfig

    return DecodingConfig(
        strategy=args.strategy,
        max_length=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        beam_size=args.beam_size,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
    )


def add_parsers(sub: Any) -> None:
    """Add ``import-hf`` and ``import-remote`` to an argparse sub-parser set."""
    p = sub.add_parser(
        "import-hf", help="a local Hugging Face model dir (safetensors) as a generator bundle"
    )
    p.add_argument("--model", type=Path, required=True, help="local transformers model directory")
    p.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    p.add_argument("--name", help="bundle name (default: the --out directory name)")
    p.add_argument(
        "--prompt",
        choices=["auto", "chat_template", "separator"],
        default="auto",
        help="how turns become the prompt: auto = the tokenizer's chat template when it has one",
    )
    p.add_argument(
        "--separator",
        default="\n",
        help="between turns when there is no chat template (default: a newline; '\\n' is read "
        "as one)",
    )
    p.add_argument("--system", help="a system message before the turns (chat templates only)")
    p.add_argument("--context-turns", type=int, default=8, help="most recent turns read")
    p.add_argument(
        "--max-source-len",
        type=int,
        help="prompt tokens kept, from the newest (default 512, within the model's positions)",
    )
    _add_decoding(p, 32)
    p.set_defaults(run=_import_hf)

    p = sub.add_parser(
        "import-remote", help="an OpenAI-compatible chat endpoint as a generator bundle"
    )
    p.add_argument("--url", required=True, help="API base URL, e.g. http://vllm:8000/v1")
    p.add_argument("--model", required=True, help="the model name the endpoint serves")
    p.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    p.add_argument("--name", help="bundle name (default: the --out directory name)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    p.add_argument(
        "--api-key-env",
        default="DIALOGUE_REMOTE_API_KEY",
        help="environment variable that holds the API key when the bundle is loaded (the key "
        "itself is never written)",
    )
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight at most")
    p.add_argument("--retries", type=int, default=2, help="on connect errors and 502/503 only")
    p.add_argument(
        "--cooldown", type=float, default=1.0, help="seconds of failing fast after an outage"
    )
    p.add_argument("--context-turns", type=int, default=16, help="most recent turns sent")
    p.add_argument("--system", help="a system message before the turns")
    _add_decoding(p, 64)
    p.set_defaults(run=_import_remote)


def _separator(value: str) -> str:
    """``\\n`` and ``\\t`` typed on a command line mean the characters."""
    return value.replace("\\n", "\n").replace("\\t", "\t")


def _import_hf(args: argparse.Namespace) -> int:
    from models.hf_generator import import_hf_model

    manifest = import_hf_model(
        args.model,
        args.out,
        name=args.name,
        separator=_separator(args.separator),
        prompt_format=args.prompt,
        system=args.system,
        max_context_turns=args.context_turns,
        max_source_len=args.max_source_len,
        decoding=_decoding(args),
    )
    print_manifest(manifest)
    return 0


def _import_remote(args: argparse.Namespace) -> int:
    from models.remote_generator import import_remote

    manifest = import_remote(
        args.out,
        url=args.url,
        model=args.model,
        name=args.name,
        timeout_s=args.timeout,
        api_key_env=args.api_key_env,
        max_concurrency=args.concurrency,
        retries=args.retries,
        cooldown_s=args.cooldown,
        max_context_turns=args.context_turns,
        system=args.system,
        decoding=_decoding(args),
    )
    print_manifest(manifest)
    return 0
