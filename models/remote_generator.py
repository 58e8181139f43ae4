"""A generator whose model is an OpenAI-compatible chat endpoint (vLLM, TGI, ...), as a bundle.

``python -m training import-remote --url URL --model NAME --out artifacts/NAME`` writes a bundle
with no files but its manifest (``architecture`` ``remote-openai``): the base URL, the model name,
the timeout, the retry and concurrency bounds and the default decoding. The API key is never in a
bundle: it is read when the bundle is loaded from the environment variable the manifest names
(``DIALOGUE_REMOTE_API_KEY`` by default) and kept as a pydantic ``SecretStr`` (never logged).

:class:`RemoteGenerator` has the serving surface of :class:`~models.generator.GenerativeResponder`
(``reply_each``, ``decoding``, ``bundle_id``, ``manifest``, ``device``). A conversation goes out as
chat messages (the last turn is the user's, the one before it the assistant's, and so on back; an
optional system message first) to ``POST <url>/chat/completions``; each context of a micro-batch is
its own request, at most ``max_concurrency`` at a time over one pooled ``httpx.Client``
(keep-alive connections). Decoding maps onto the API: ``greedy`` and ``beam`` -> temperature 0
(chat APIs have no beam search); ``sample`` -> temperature, top_p and, when set, ``top_k``;
``max_length`` -> ``max_tokens``; ``min_length`` > 1 -> ``min_tokens``; ``num_return_sequences``
-> ``n`` (sent only above 1). ``top_k`` and ``min_tokens`` are vLLM/TGI extensions; n-gram
blocking has no equivalent and is not sent.

Failures are exceptions of :class:`RemoteError`: :class:`RemoteTimeout` (no answer within the
timeout, or the caller's deadline), :class:`RemoteUnavailable` (cannot connect, 5xx, 429) and
:class:`RemoteBadResponse` (a 4xx, or a body that is not the JSON the API promises). Only what
cannot have run the request twice is retried (``retries`` times, within the deadline): a connect
error (nothing was sent) and a 502 or 503 (the gateway or server turned it away before any reply).
A read timeout is never retried. After a timeout or an unavailable endpoint, calls fail at once
for ``cooldown_s`` (a simple circuit breaker), so a batch that the service retries request by
request, or a burst of traffic, does not wait out the timeout again and again while the endpoint
is down: the service answers from its fallback instead. ``counts`` tallies outcomes.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

from models.bundle import MANIFEST_FILE, Manifest, verify_bundle, write_bundle
from models.decoding import DecodingConfig
from models.generator import Reply
from models.responder import BundleKindError, StageObserver, observe

logger = logging.getLogger(__name__)

ARCHITECTURE = "remote-openai"
DEFAULT_KEY_ENV = "DIALOGUE_REMOTE_API_KEY"
_RETRY_STATUS = (502, 503)
_BACKOFF_S = 0.05


class RemoteError(RuntimeError):
    """The endpoint did not give a reply; the message never carries the API key.

    ``failure_reason`` is how the service counts it (dialogue_backend_failures_total's
    ``reason``, service/errors.py: failure_reason), without importing this module."""

    failure_reason: ClassVar[str] = "error"


class RemoteTimeout(RemoteError):
    failure_reason = "timeout"


class RemoteUnavailable(RemoteError):
    failure_reason = "unavailable"


class RemoteBadResponse(RemoteError):
    failure_reason = "bad_response"


@dataclass(frozen=True)
class RemoteConfig:
    """Where the endpoint is and how it is called (a bundle's ``model_config["remote"]``)."""

    url: str  # base URL of the API, e.g. http://vllm:8000/v1
    model: str  # the model name the endpoint serves
    timeout_s: float = 10.0  # per request (the caller's deadline can shorten it)
    api_key_env: str = DEFAULT_KEY_ENV  # the environment variable holding the key (may be unset)
    max_concurrency: int = 16  # requests in flight at once
    retries: int = 2  # on connect errors and 502/503 only
    cooldown_s: float = 1.0  # fail fast this long after a timeout or an unavailable endpoint
    max_context_turns: int = 16
    system: str | None = None  # a system message before the conversation

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be an http(s) URL with a host, got {self.url!r}")
        if parts.username or parts.password:
            raise ValueError("the url must not carry credentials: give the key via api_key_env")
        if not self.model:
            raise ValueError("model must be a non-empty string")
        if not self.timeout_s > 0 or self.max_concurrency < 1 or self.retries < 0:
            raise ValueError("need timeout_s > 0, max_concurrency >= 1 and retries >= 0")
        if self.cooldown_s < 0 or self.max_context_turns < 1:
            raise ValueError("need cooldown_s >= 0 and max_context_turns >= 1")

    @property
    def base_url(self) -> str:
        """The URL without a trailing slash or a pasted ``/chat/completions``."""
        url = self.url.rstrip("/")
        for tail in ("/chat/completions", "/completions"):
            if url.endswith(tail):
                url = url[: -len(tail)]
        return url


def chat_messages(context: Sequence[str], system: str | None = None) -> list[dict[str, str]]:
    """Turns as chat messages, the last one the user's (alternating back from it)."""
    n = len(context)
    messages = [
        {"role": "user" if (n - 1 - i) % 2 == 0 else "assistant", "content": t}
        for i, t in enumerate(context)
    ]
    return ([{"role": "system", "content": system}] if system else []) + messages


def _snippet(response: httpx.Response) -> str:
    try:
        text = response.text
    except Exception:  # undecodable body
        return ""
    return " ".join(text.split())[:200]


class RemoteGenerator:
    """Replies from an OpenAI-compatible chat endpoint (a ``remote-openai`` bundle)."""

    kind: ClassVar[str] = "generator"
    architecture: ClassVar[str] = ARCHITECTURE

    def __init__(
        self,
        config: RemoteConfig,
        decoding: DecodingConfig,
        manifest: Manifest | None = None,
        *,
        api_key: SecretStr | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.config = config
        self.decoding = decoding
        self.manifest = manifest
        self._api_key = api_key
        headers = {"Accept": "application/json"}
        if api_key is not None and api_key.get_secret_value():
            headers["Authorization"] = f"Bearer {api_key.get_secret_value()}"
        self._client = httpx.Client(
            base_url=config.base_url,
            headers=headers,
            timeout=httpx.Timeout(config.timeout_s, connect=min(config.timeout_s, 3.0)),
            limits=httpx.Limits(
                max_connections=config.max_concurrency,
                max_keepalive_connections=config.max_concurrency,
            ),
            transport=transport,
        )
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._open_until = 0.0  # time.monotonic() until which calls fail fast
        self.counts: Counter[str] = Counter()

    # --- identity ----------------------------------------------------------------------------

    @property
    def device(self) -> str:
        return "remote"

    @property
    def bundle_id(self) -> str:
        return self.manifest.bundle_id if self.manifest else "unsaved"

    @classmethod
    def load(
        cls, bundle_dir: Path, device: Any = None, dtype: Any = None, **kwargs: Any
    ) -> RemoteGenerator:
        """A ``remote-openai`` bundle (``device`` and ``dtype`` do not apply); the API key comes
        from the environment variable the manifest names. Nothing is sent at load."""
        bundle_dir = Path(bundle_dir)
        manifest = verify_bundle(bundle_dir)
        if manifest.kind != cls.kind or manifest.architecture != ARCHITECTURE:
            raise BundleKindError(
                f"bundle {bundle_dir}: is a {manifest.kind} bundle of architecture "
                f"{manifest.architecture or 'ours'}, not {ARCHITECTURE}",
                bundle_dir=bundle_dir,
                file=MANIFEST_FILE,
            )
        mc = manifest.model_config
        config = RemoteConfig(**mc["remote"])
        key = os.environ.get(config.api_key_env)
        return cls(
            config,
            DecodingConfig(**mc["decoding"]),
            manifest,
            api_key=SecretStr(key) if key else None,
            **kwargs,
        )

    def close(self) -> None:
        """Close the pooled connections and the request threads (the service's backend calls it
        when it stops: reload, shutdown); idempotent. No call may follow."""
        self._client.close()
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)

    @property
    def closed(self) -> bool:
        return self._client.is_closed

    # --- one request -------------------------------------------------------------------------

    def _count(self, outcome: str) -> None:
        with self._lock:
            self.counts[outcome] += 1

    def _trip(self) -> None:
        if self.config.cooldown_s > 0:
            with self._lock:
                self._open_until = time.monotonic() + self.config.cooldown_s

    def post(self, path: str, body: dict[str, Any], *, deadline: float | None = None) -> Any:
        """POST JSON and return the decoded JSON object, retrying only where it is safe."""
        if time.monotonic() < self._open_until:
            self._count("unavailable")
            raise RemoteUnavailable(
                f"{self.config.base_url} failed moments ago; not calling it for "
                f"{self.config.cooldown_s:g} s"
            )
        attempt = 0
        while True:
            timeout = self.config.timeout_s
            if deadline is not None:
                timeout = min(timeout, deadline - time.monotonic())
                if timeout <= 0:
                    self._count("timeout")
                    raise RemoteTimeout(f"{self.config.base_url}: no time left before the deadline")
            retry_why = ""
            try:
                response = self._client.post(
                    path,
                    json=body,
                    timeout=httpx.Timeout(timeout, connect=min(timeout, 3.0)),
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                retry_why = f"cannot connect: {type(exc).__name__}"
            except httpx.TimeoutException as exc:
                self._count("timeout")
                self._trip()
                raise RemoteTimeout(
                    f"{self.config.base_url}{path}: no answer within {timeout:.2f} s "
                    f"({type(exc).__name__})"
                ) from None
            except httpx.HTTPError as exc:  # a broken connection mid-request: never resent
                self._count("unavailable")
                self._trip()
                raise RemoteUnavailable(
                    f"{self.config.base_url}{path}: {type(exc).__name__}"
                ) from None
            else:
                if response.status_code in _RETRY_STATUS:
                    retry_why = f"HTTP {response.status_code}"
                else:
                    return self._decode(path, response)
            if attempt >= self.config.retries:
                self._count("unavailable")
                self._trip()
                raise RemoteUnavailable(
                    f"{self.config.base_url}{path}: {retry_why} (after {attempt + 1} attempts)"
                )
            attempt += 1
            self._count("retry")
            pause = _BACKOFF_S * attempt
            if deadline is not None and time.monotonic() + pause >= deadline:
                self._count("timeout")
                raise RemoteTimeout(f"{self.config.base_url}{path}: {retry_why}; no time to retry")
            time.sleep(pause)

    def _decode(self, path: str, response: httpx.Response) -> Any:
        status = response.status_code
        where = f"{self.config.base_url}{path}"
        if status >= 500 or status == 429:
            self._count("unavailable")
            self._trip()
            raise RemoteUnavailable(f"{where}: HTTP {status}: {_snippet(response)}")
        if status != 200:
            self._count("bad_response")
            raise RemoteBadResponse(f"{where}: HTTP {status}: {_snippet(response)}")
        try:
            data = response.json()
        except ValueError:
            self._count("bad_response")
            raise RemoteBadResponse(
                f"{where}: the body is not JSON: {_snippet(response)}"
            ) from None
        if not isinstance(data, dict):
            self._count("bad_response")
            raise RemoteBadResponse(f"{where}: expected a JSON object, got {type(data).__name__}")
        with self._lock:
            self.counts["ok"] += 1
            self._open_until = 0.0
        return data

    # --- chat --------------------------------------------------------------------------------

    def chat_body(
        self, context: Sequence[str], config: DecodingConfig, n: int, seed: int | None = None
    ) -> dict[str, Any]:
        """The chat-completions request for one conversation."""
        turns = list(context)[-self.config.max_context_turns :]
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": chat_messages(turns, self.config.system),
            "max_tokens": config.max_length,
        }
        if n > 1:  # the API's default is 1 (and some servers accept nothing else)
            body["n"] = n
        if config.strategy == "sample":
            body["temperature"] = config.temperature
            body["top_p"] = config.top_p
            if config.top_k:
                body["top_k"] = config.top_k
        else:
            body["temperature"] = 0.0
        if config.min_length > 1:
            body["min_tokens"] = config.min_length
        if seed is not None:
            body["seed"] = seed
        return body

    def complete(
        self,
        context: Sequence[str],
        config: DecodingConfig,
        *,
        n: int | None = None,
        seed: int | None = None,
        deadline: float | None = None,
    ) -> list[Reply]:
        """``n`` (default ``num_return_sequences``) replies to one conversation; an endpoint that
        returns fewer choices than asked is asked again for the rest."""
        want = n or config.num_return_sequences
        replies: list[Reply] = []
        calls = 0
        while len(replies) < want and calls < want:
            body = self.chat_body(
                context, config, want - len(replies), None if seed is None else seed + calls
            )
            data = self.post("/chat/completions", body, deadline=deadline)
            calls += 1
            choices = data.get("choices")
            if not isinstance(choices, list) or not choices:
                self._count("bad_response")
                raise RemoteBadResponse(f"{self.config.base_url}: the reply has no choices")
            for choice in choices:
                message = choice.get("message") if isinstance(choice, dict) else None
                content = message.get("content") if isinstance(message, dict) else None
                if not isinstance(content, str):
                    self._count("bad_response")
                    raise RemoteBadResponse(
                        f"{self.config.base_url}: a choice without message.content"
                    )
                # No token ids come back from a chat API: Reply.tokens stays empty.
                replies.append(Reply(content.strip(), []))
        return replies[:want]

    def _map(self, fn: Any, items: Sequence[Any]) -> list[Any]:
        """``fn`` over ``items``, at most ``max_concurrency`` at once; the first error raised after
        every call has finished (calls in flight cannot be taken back)."""
        if len(items) <= 1:
            return [fn(x) for x in items]
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(
                        self.config.max_concurrency, thread_name_prefix="remote-generator"
                    )
        futures = [self._pool.submit(fn, x) for x in items]
        results: list[Any] = []
        first_error: Exception | None = None
        for future in futures:
            try:
                results.append(future.result())
            except Exception as exc:
                first_error = first_error or exc
                results.append(None)
        if first_error is not None:
            raise first_error
        return results

    def reply_each(
        self,
        contexts: Sequence[Sequence[str]],
        configs: Sequence[DecodingConfig],
        *,
        on_stage: StageObserver | None = None,
        deadline: float | None = None,
    ) -> list[list[Reply]]:
        """For each context, its ``num_return_sequences`` replies, one request per context, sent
        concurrently; ``deadline`` (time.monotonic()) bounds every request. The wait goes to
        ``on_stage`` as ``generate``."""
        if len(contexts) != len(configs):
            raise ValueError(f"{len(contexts)} contexts but {len(configs)} decoding configs")
        started = time.perf_counter()
        out = self._map(
            lambda i: self.complete(contexts[i], configs[i], deadline=deadline),
            range(len(contexts)),
        )
        observe(on_stage, "generate", started)
        return out

    def respond(
        self, contexts: Sequence[Sequence[str]], decoding: DecodingConfig | None = None
    ) -> list[str]:
        config = decoding or self.decoding
        return [r.text for row in self.reply_each(contexts, [config] * len(contexts)) for r in row]

    # --- log-probabilities (G2R-DM) ----------------------------------------------------------

    def response_log_likelihood(
        self, prompt: str, response: str, *, deadline: float | None = None
    ) -> tuple[float, int] | None:
        """Summed log P(response tokens | prompt) and the token count, from the completions
        endpoint with ``echo`` (OpenAI's legacy logprobs format, which vLLM serves); None when the
        endpoint returns no log-probabilities. The reply's end (EOS) is not scored: the API gives
        log-probabilities of text only."""
        body = {
            "model": self.config.model,
            "prompt": prompt + response,
            "max_tokens": 1,
            "echo": True,
            "logprobs": 1,
            "temperature": 0.0,
        }
        data = self.post("/completions", body, deadline=deadline)
        try:
            lp = data["choices"][0]["logprobs"]
            offsets, values = lp["text_offset"], lp["token_logprobs"]
        except (KeyError, IndexError, TypeError):
            return None
        if not isinstance(offsets, list) or not isinstance(values, list):
            return None
        end = len(prompt) + len(response)
        total, count = 0.0, 0
        for offset, value in zip(offsets, values, strict=False):
            if len(prompt) <= offset < end and value is not None:
                total += float(value)
                count += 1
        return (total, count) if count else None


# --- import -------------------------------------------------------------------------------------


def import_remote(
    out_dir: Path,
    *,
    url: str,
    model: str,
    name: str | None = None,
    timeout_s: float = 10.0,
    api_key_env: str = DEFAULT_KEY_ENV,
    max_concurrency: int = 16,
    retries: int = 2,
    cooldown_s: float = 1.0,
    max_context_turns: int = 16,
    system: str | None = None,
    decoding: DecodingConfig | None = None,
) -> Manifest:
    """Write a ``remote-openai`` generator bundle (a manifest only; never the key)."""
    out_dir = Path(out_dir)
    config = RemoteConfig(
        url=url,
        model=model,
        timeout_s=timeout_s,
        api_key_env=api_key_env,
        max_concurrency=max_concurrency,
        retries=retries,
        cooldown_s=cooldown_s,
        max_context_turns=max_context_turns,
        system=system,
    )
    return write_bundle(
        out_dir,
        kind="generator",
        architecture=ARCHITECTURE,
        name=name or out_dir.name,
        model_config={
            "remote": asdict(config),
            "decoding": asdict(decoding or DecodingConfig(max_length=64)),
        },
        training={"method": "import-remote"},
        metrics={},
        state_dict=None,
        tokenizer_json=None,
    )
