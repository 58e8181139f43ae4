"""The HTTP routes: thin functions over :class:`~service.engine.DialogueEngine` (the app is built
in service/app.py). POST /respond's body model carries this service's limits, so the OpenAPI
schema states them; errors are raised as service errors and rendered in one place
(service/errors.py)."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, Response
from fastapi.security import HTTPBearer

from service.engine import DialogueEngine
from service.errors import NotReady, Unauthorized
from service.http import body_limit, received_at, request_id, require_json
from service.metrics import ServiceMetrics
from service.openai_api import build_openai_router
from service.schemas import (
    ErrorBody,
    FeedbackRating,
    FeedbackRequest,
    FeedbackResponse,
    Health,
    ModelList,
    RespondRequest,
    RespondResponse,
    request_model,
)
from service.settings import Settings

logger = logging.getLogger(__name__)

# The chat page: static HTML, JS and CSS, no build step.
STATIC_DIR = Path(__file__).parent / "static"
JSON_MEDIA_TYPE = "application/json"

_ERROR_MEANING = {
    400: "the body is not valid JSON",
    413: "the body is larger than any request within the limits can be",
    415: "the body is not sent as JSON (Content-Type: application/json)",
    422: "the request breaks this schema",
    429: "overloaded: the backend's queue is full; retry after Retry-After seconds",
    503: "not ready, or the backend failed or is not loaded (and no fallback answered)",
    504: "no answer within the request deadline (REQUEST_TIMEOUT_S, end to end)",
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}


def _error_responses(max_body: int) -> dict[int | str, dict[str, Any]]:
    """The documented error responses of POST /respond."""
    meaning = {**_ERROR_MEANING, 413: f"the body is over {max_body} bytes"}
    out: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorBody, "description": text} for code, text in meaning.items()
    }
    out[429]["headers"] = _RETRY_AFTER
    return out


def _check_bearer(request: Request, token: str) -> None:
    """Raises Unauthorized (401, ``WWW-Authenticate: Bearer``) and logs the refusal (never the
    token) unless the request carries ``Authorization: Bearer <token>``."""
    header = request.headers.get("authorization")
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.encode(), token.encode()):
        if header is None:
            why = "no Authorization header"
        elif scheme.lower() != "bearer":
            why = "not a Bearer credential"
        else:
            why = "wrong bearer token"
        client = request.client.host if request.client else "unknown"
        logger.warning(
            "refused admin request %s %s from %s: %s", request.method, request.url.path, client, why
        )
        raise Unauthorized("a valid bearer token is required")


def build_router(settings: Settings, engine: DialogueEngine, metrics: ServiceMetrics) -> APIRouter:
    """Every route of the service but the static files and the offline /docs (service/app.py)."""
    router = APIRouter()
    max_body = body_limit(settings.max_turns, settings.request_chars_limit)

    # The request body model carries this service's limits, so the OpenAPI schema states them.
    respond_request = request_model(
        max_turns=settings.max_turns,
        max_turn_chars=settings.max_turn_chars,
        max_candidates=settings.max_candidates,
        request_chars=settings.request_chars_limit,
        arms=list(settings.arm_specs()),
    )

    async def respond(body: RespondRequest, request: Request) -> Response:
        """Answer a conversation (A/B routed, sticky per session_id) within the request
        deadline. Turns must contain a visible character; a body must be JSON sent with
        Content-Type: application/json. Options of the other backend are accepted and used
        only if the request falls back to it. The reply's request_id (also the X-Request-ID
        header: a client's own well-formed one is kept) is what POST /feedback rates."""
        reply = await engine.respond(
            body, received=received_at(request), request_id=request_id(request)
        )
        # The engine built (and validated) this model: serialize it once with pydantic-core,
        # without FastAPI validating it again against response_model (which stays for the
        # OpenAPI schema).
        return Response(reply.model_dump_json(exclude_none=True), media_type=JSON_MEDIA_TYPE)

    respond.__annotations__["body"] = respond_request  # a class built here, not a name
    router.post(
        "/respond",
        response_model=RespondResponse,
        response_model_exclude_none=True,
        responses=_error_responses(max_body),
        dependencies=[Depends(require_json)],
    )(respond)

    async def feedback(body: FeedbackRequest) -> FeedbackResponse:
        """Rate a reply by its request_id ("up" | "down" | 1..5, optional reason; a second
        rating of the same request replaces the first), or end a session
        ({"session_id", "event": "end", "turns"?}). A request id this process did not answer is
        accepted and counted as unmatched ("matched": false)."""
        if isinstance(body, FeedbackRating):
            result = engine.rate(body.request_id, body.rating, body.reason)
            return FeedbackResponse(
                recorded="rating",
                request_id=body.request_id,
                matched=result.matched,
                replaced=result.replaced,
            )
        engine.end_session(body)
        return FeedbackResponse(recorded="session_end")

    feedback.__annotations__["body"] = FeedbackRequest
    router.post(
        "/feedback",
        response_model=FeedbackResponse,
        response_model_exclude_none=True,
        responses={
            code: {"model": ErrorBody, "description": _ERROR_MEANING[code]}
            for code in (400, 413, 415, 422)
        },
        dependencies=[Depends(require_json)],
    )(feedback)

    router.include_router(build_openai_router(settings, engine))

    @router.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        """Alive (the process answers), loaded or not."""
        return Health(status="ok")

    @router.get("/readyz", response_model=Health, responses={503: {"model": ErrorBody}})
    async def readyz() -> Health:
        """503 until every bundle is loaded and the backends run."""
        if not engine.ready:
            raise NotReady("the service is still loading its models")
        return Health(status="ready", backends=engine.serving.kinds())  # type: ignore[arg-type]

    @router.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        """Every loaded arm: its weight, fallback arm and bundle; ``data`` lists the same as
        OpenAI clients read it (the ``model`` of POST /v1/chat/completions)."""
        return ModelList(models=engine.models(), data=engine.openai_models())

    if settings.admin_token is not None:
        token = settings.admin_token.get_secret_value()
        # Declares the bearer scheme in the OpenAPI schema; the check itself is _check_bearer.
        bearer = HTTPBearer(auto_error=False, description="DIALOGUE_ADMIN_TOKEN")

        @router.post(
            "/admin/reload",
            response_model=ModelList,
            responses={
                401: {"model": ErrorBody, "description": "no or a wrong bearer token"},
                409: {
                    "model": ErrorBody,
                    "description": "a bundle did not load: the loaded models keep serving",
                },
            },
            dependencies=[Depends(bearer)],
        )
        async def admin_reload(request: Request) -> ModelList:
            """Load and verify the bundles again and swap them in; a bad bundle keeps the old."""
            _check_bearer(request, token)
            return ModelList(models=await engine.reload(), data=engine.openai_models())

    @router.get("/", include_in_schema=False)
    async def chat_page() -> FileResponse:
        """The chat page; it calls POST /respond from the browser."""
        return FileResponse(STATIC_DIR / "index.html")

    @router.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=metrics.content_type)

    return router
