"""HTTP-level guards in front of the routes: the request body size limit (enforced while the body
is read, so a body without Content-Length is stopped as early as one with it) and the JSON
content type of request bodies."""

from __future__ import annotations

import email.message
import functools
import logging
import re
import time
import uuid

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import UnsupportedMediaType
from service.json_response import dumps

logger = logging.getLogger(__name__)

# Worst-case bytes of one character in a JSON body: an astral character written as an escaped
# UTF-16 surrogate pair ("\ud83d\ude00") takes 12 bytes. The body limit allows that for every
# character the request limits allow, so a request within them is never refused for its size.
JSON_BYTES_PER_CHAR = 12
BODY_SLACK_BYTES = 16 * 1024  # keys, quotes, commas, session_id and options
MAX_SESSION_ID_CHARS = 256
# request.state key: time.monotonic() when the app first saw the request (the deadline's start)
RECEIVED_AT = "dialogue_received_at"
# request.state key: the request's id (a well-formed X-Request-ID sent by the client, else new)
REQUEST_ID = "dialogue_request_id"
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")  # schemas.REQUEST_ID_PATTERN
REQUEST_ID_HEADER = b"x-request-id"


def request_id(request: Request) -> str:
    """The id RequestIdMiddleware gave ``request`` (a new one when it did not run)."""
    value = getattr(request.state, REQUEST_ID, None)
    return value if isinstance(value, str) else uuid.uuid4().hex


class RequestIdMiddleware:
    """Gives every HTTP request an id and every response an ``X-Request-ID`` header with it.

    A client's own ``X-Request-ID`` is kept when it is 1-64 characters of A-Z a-z 0-9 . _ -
    (anything else, or none, gets a new uuid4 hex), so a client can follow its request into the
    exposure log and rate it with POST /feedback."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = None
        for name, value in scope.get("headers", ()):
            if name == REQUEST_ID_HEADER:
                given = value.decode("latin-1")
                break
        rid = given if given is not None and _REQUEST_ID_RE.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})[REQUEST_ID] = rid
        header = (REQUEST_ID_HEADER, rid.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    h for h in message.get("headers", ()) if h[0].lower() != REQUEST_ID_HEADER
                ]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        await self.app(scope, receive, send_with_id)


def received_at(request: Request) -> float | None:
    """When the outermost middleware first saw ``request`` (time.monotonic()), if it did."""
    value = getattr(request.state, RECEIVED_AT, None)
    return value if isinstance(value, float) else None


def body_limit(max_turns: int, request_chars: int) -> int:
    """The largest body a request within the limits can need (bytes)."""
    return (
        request_chars * JSON_BYTES_PER_CHAR
        + max_turns * 4  # quotes and a comma per turn
        + MAX_SESSION_ID_CHARS * JSON_BYTES_PER_CHAR
        + BODY_SLACK_BYTES
    )


class BodyLimitMiddleware:
    """Refuses request bodies over ``max_bytes`` with 413 while reading them.

    A declared Content-Length over the limit is refused before a byte of the body is read. A body
    without one (``Transfer-Encoding: chunked``) is read here, chunk by chunk, up to the limit:
    past it the 413 goes out at once with ``Connection: close`` and the rest is never read, so
    memory stays within ``max_bytes`` whatever the client sends. A body within the limit is
    replayed to the app unchanged (it is at most ``max_bytes``, a few hundred KB)."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, path_limits: dict[str, int] | None = None
    ) -> None:
        self.app = app
        self.default_max_bytes = max_bytes
        self.path_limits = path_limits or {}  # paths with a limit of their own

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.path_limits.get(scope.get("path", ""), self.default_max_bytes)
        # The request deadline starts here, before the body is read (service/engine.py).
        scope.setdefault("state", {})[RECEIVED_AT] = time.monotonic()
        length = _content_length(scope)
        if length is not None and length > max_bytes:
            await self._refuse(send, f"request body of {length} bytes exceeds {max_bytes}")
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect: the client left
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > max_bytes:
                await self._refuse(
                    send, f"request body exceeds {max_bytes} bytes (read {size} so far)"
                )
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as ASGI does

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(send: Send, message: str) -> None:
        payload = dumps({"error": {"type": "payload_too_large", "message": message}})
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    # the rest of the body is never read: the connection cannot be reused
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload, "more_body": False})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None


JSON_CONTENT_TYPE_MESSAGE = (
    "the request body must be JSON, sent with Content-Type: application/json"
)


@functools.lru_cache(maxsize=64)
def is_json_content_type(declared: str) -> bool:
    """``application/json`` or ``application/*+json`` (parameters and case as RFC 9110 allows).
    Cached: clients send the same few headers, and parsing one costs more than the rest of the
    check (the profile of POST /respond, reports/http_profile.md)."""
    parsed = email.message.Message()
    parsed["content-type"] = declared
    subtype = parsed.get_content_subtype()
    return parsed.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


async def require_json(request: Request) -> None:
    """A route dependency: the body must be declared JSON (``application/json`` or
    ``application/*+json``); anything else is a 415 that says so, never a puzzling 422."""
    declared = request.headers.get("content-type")
    if declared and is_json_content_type(declared):
        return
    got = f"got Content-Type: {declared}" if declared else "no Content-Type header was sent"
    raise UnsupportedMediaType(f"{JSON_CONTENT_TYPE_MESSAGE} ({got})")
