"""The FastAPI application: ``create_app(settings)`` builds it (error handlers, the body limit,
the routes of service/routes.py, the static files and offline /docs) and its lifespan loads the
backends into ``app.state.engine`` and releases them; SIGHUP reloads them."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles

from service.device import set_threads
from service.engine import DialogueEngine, load_serving
from service.errors import OPENAI_PATHS, install_error_handlers
from service.http import BodyLimitMiddleware, RequestIdMiddleware, body_limit
from service.metrics import ServiceMetrics
from service.routes import STATIC_DIR, build_router
from service.settings import Settings

logger = logging.getLogger(__name__)

CHAT_HISTORY_FACTOR = 8  # body limit of POST /v1/chat/completions, in /respond body limits


def _install_sighup_reload(engine: DialogueEngine) -> bool:
    """SIGHUP reloads the bundles (as POST /admin/reload does); False where signals cannot be
    handled (not the main thread, or no SIGHUP on this platform)."""
    if not hasattr(signal, "SIGHUP"):
        return False

    def on_hangup() -> None:
        task = asyncio.ensure_future(engine.reload())
        # reload logs its own failure; retrieving the exception keeps asyncio from warning
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_hangup)
    except (ValueError, RuntimeError, NotImplementedError):
        logger.info("SIGHUP reload unavailable here (not the main thread)")
        return False
    return True


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; its lifespan loads the bundles onto the device and releases them on exit."""
    settings = settings or Settings()
    metrics = ServiceMetrics(settings.quality_window)
    engine = DialogueEngine(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Before any model exists: intra-op threads as the settings say (see TORCH_THREADS).
        set_threads(settings.torch_threads)
        # Loading verifies every checksum and may take seconds: keep it off the event loop.
        engine.serving = await asyncio.to_thread(load_serving, settings, metrics)
        await engine.start()
        logger.info("ready: %s", ", ".join(f"{n}={b.model_id}" for n, b in engine.backends.items()))
        hangup = _install_sighup_reload(engine)
        try:
            yield
        finally:
            if hangup:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            await engine.stop()

    app = FastAPI(
        title="Dialogue response service",
        description="Answers conversations with a generative or a G2R retrieval responder.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.engine = engine

    def count_invalid(request: Request) -> None:
        if request.url.path == "/respond" or request.url.path in OPENAI_PATHS:
            metrics.observe_request("none", "none", "invalid", 0.0)

    install_error_handlers(app, on_invalid=count_invalid)
    # Outermost: a body is counted while it is read, with or without Content-Length.
    max_body = body_limit(settings.max_turns, settings.request_chars_limit)
    # A chat frontend sends the whole conversation to /v1/chat/completions, which keeps the last
    # MAX_TURNS turns: its bodies may be longer (CHAT_HISTORY_FACTOR times).
    chat_body = max_body * CHAT_HISTORY_FACTOR
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=max_body,
        path_limits=dict.fromkeys(OPENAI_PATHS, chat_body),
    )
    # Outside it: every response, a 413 of the body limit too, carries X-Request-ID.
    app.add_middleware(RequestIdMiddleware)

    app.include_router(build_router(settings, engine, metrics))
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    from service.docs_assets import serve_docs_offline  # /docs and /redoc without a CDN

    serve_docs_offline(app)
    return app
