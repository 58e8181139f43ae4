"""Domain exceptions and the one place that maps them to JSON errors (docs/design.md, "HTTP API")."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.json_response import FastJSONResponse

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """A failure the client is told about: an HTTP status, a stable ``type`` and a message."""

    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "internal_error"
    backend: str | None = None  # the backend that failed, when one did (for metrics labels)
    headers: dict[str, str] | None = None  # extra response headers (Retry-After, WWW-Authenticate)


class InvalidRequest(ServiceError):
    status_code = 422
    error_type = "invalid_request"


class InvalidOptions(InvalidRequest):
    error_type = "invalid_options"


class PayloadTooLarge(ServiceError):
    status_code = 413
    error_type = "payload_too_large"


class InvalidJSON(ServiceError):
    """The body is not JSON (a syntax error, or bytes that are not UTF-8)."""

    status_code = 400
    error_type = "invalid_json"


class UnsupportedMediaType(ServiceError):
    """The body is not declared as JSON (Content-Type)."""

    status_code = 415
    error_type = "unsupported_media_type"


class Overloaded(ServiceError):
    """A backend's queue is full: shed (429 with Retry-After), never fall back to the other."""

    status_code = 429
    error_type = "overloaded"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(max(1, retry_after_s))}


class NotReady(ServiceError):
    status_code = 503
    error_type = "not_ready"


class BackendUnavailable(ServiceError):
    status_code = 503
    error_type = "backend_unavailable"


class BackendFailed(ServiceError):
    """The model call raised; the message stays generic (details go to the log only).

    ``reason`` (one of FAILURE_REASONS) says how it failed, for the failure metric: ``timeout``,
    ``unavailable`` or ``bad_response`` when the responder said so (a remote generator's errors,
    models/remote_generator.py), else ``error``."""

    status_code = 503
    error_type = "backend_error"

    def __init__(self, message: str, reason: str = "error") -> None:
        super().__init__(message)
        self.reason = reason if reason in FAILURE_REASONS else "error"


class DeadlineExceeded(ServiceError):
    status_code = 504
    error_type = "deadline_exceeded"


# The ``reason`` label of dialogue_backend_failures_total (service/metrics.py).
FAILURE_REASONS = ("timeout", "unavailable", "bad_response", "error")


def failure_reason(exc: BaseException) -> str:
    """How a backend attempt failed, one of FAILURE_REASONS: the deadline passed (``timeout``),
    the backend was stopped or not running (``unavailable``), or what the model call raised: an
    exception may say itself with a ``failure_reason`` attribute (the remote generator's
    RemoteTimeout / RemoteUnavailable / RemoteBadResponse do; service code never imports them),
    anything else is ``error``."""
    if isinstance(exc, DeadlineExceeded):
        return "timeout"
    if isinstance(exc, BackendUnavailable):
        return "unavailable"
    if isinstance(exc, BackendFailed):
        return exc.reason
    reason = getattr(exc, "failure_reason", None)
    return reason if reason in FAILURE_REASONS else "error"


class ReloadFailed(ServiceError):
    """New bundles did not load; the old ones keep serving. The message says why."""

    status_code = 409
    error_type = "reload_failed"


class Unauthorized(ServiceError):
    status_code = 401
    error_type = "unauthorized"
    headers = {"WWW-Authenticate": "Bearer"}  # noqa: RUF012 - never mutated


class ModelNotFound(ServiceError):
    """POST /v1/chat/completions named a model that is no arm (OpenAI's 404)."""

    status_code = 404
    error_type = "model_not_found"


# Routes that answer errors as OpenAI does: {"error": {"message", "type", "param", "code"}}, with
# 400 where this service says 422, so OpenAI SDKs raise their usual exceptions.
OPENAI_PATHS = frozenset({"/v1/chat/completions"})


def openai_error_type(status_code: int) -> str:
    """OpenAI's error ``type`` for a status code."""
    if status_code == 401:
        return "authentication_error"
    if status_code == 429:
        return "rate_limit_error"
    if status_code >= 500:
        return "server_error"
    return "invalid_request_error"


def error_response(
    status_code: int,
    error_type: str,
    message: str,
    headers: dict[str, str] | None = None,
    request: Request | None = None,
    param: str | None = None,
) -> JSONResponse:
    """The JSON error body: ``{"error": {"type", "message"}}``, or OpenAI's shape on OPENAI_PATHS
    (``type`` then OpenAI's, and ``code`` this service's type)."""
    if request is not None and request.url.path in OPENAI_PATHS:
        status_code = 400 if status_code == 422 else status_code
        content = {
            "error": {
                "message": message,
                "type": openai_error_type(status_code),
                "param": param,
                "code": error_type,
            }
        }
        return FastJSONResponse(status_code=status_code, content=content, headers=headers)
    return FastJSONResponse(
        status_code=status_code,
        content={"error": {"type": error_type, "message": message}},
        headers=headers,
    )


def _describe_validation(exc: RequestValidationError) -> str:
    """``body.context: List should have at least 1 item; ...`` without echoing the input."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg")))
    return "; ".join(parts) or "invalid request"


def install_error_handlers(
    app: FastAPI, on_invalid: Callable[[Request], None] | None = None
) -> None:
    """Register one handler per exception type; ``on_invalid`` lets metrics count 422s."""

    async def service_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        if isinstance(exc, UnsupportedMediaType) and on_invalid is not None:
            on_invalid(request)  # refused before the engine saw it: count it as invalid here
        return error_response(
            exc.status_code, exc.error_type, str(exc) or exc.error_type, exc.headers, request
        )

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        if on_invalid is not None:
            on_invalid(request)
        broken = [e for e in exc.errors() if e.get("type") == "json_invalid"]
        if broken:  # not JSON at all: a 400, as for any unparseable request
            where = broken[0].get("loc", ("body", "?"))[-1]
            why = (broken[0].get("ctx") or {}).get("error", "JSON decode error")
            return error_response(
                400,
                InvalidJSON.error_type,
                f"the body is not valid JSON: {why} (at {where})",
                request=request,
            )
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return error_response(
            422, "validation_error", _describe_validation(exc), request=request, param=param
        )

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 400:  # FastAPI could not decode the body (not UTF-8)
            if on_invalid is not None:
                on_invalid(request)
            return error_response(
                400,
                InvalidJSON.error_type,
                "the body is not valid JSON (it must be UTF-8 text)",
                request=request,
            )
        # exc.headers carries e.g. Allow on a 405 (RFC 9110 requires it)
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, "http_error", str(exc.detail), headers, request)

    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        # Logged with its traceback here; the client only learns that something broke.
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal server error", request=request)

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)
