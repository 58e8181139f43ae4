"""``python -m service``: serve the app with uvicorn; settings from DIALOGUE_* or .env.

uvicorn runs on uvloop with the httptools HTTP parser when they are installed (the ``serve``
extra installs both), else on asyncio's loop with h11: the same app either way. ``WORKERS`` > 1
starts that many uvicorn worker processes on one port, each loading its own copy of the models
(``worker_app`` builds each one's app from the same environment)."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError

from service.app import create_app
from service.device import resolve_device, retrieval_int8, serving_dtype
from service.settings import Settings

logger = logging.getLogger(__name__)


def server_impl() -> tuple[str, str]:
    """(event loop, HTTP parser) for uvicorn: uvloop and httptools when importable, else the
    pure-Python asyncio loop and h11 (uvicorn's own fallbacks)."""
    loop = "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") is not None else "h11"
    return loop, http


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def worker_app() -> FastAPI:
    """The app of one uvicorn worker process (``WORKERS`` > 1): its settings from the
    environment the parent validated, its logging as the parent's."""
    settings = Settings()
    _configure_logging(settings)
    return create_app(settings)


def main() -> None:
    try:
        settings = Settings()
    except ValidationError as exc:  # one clear message, not a traceback; inputs are not echoed
        raise SystemExit(f"refusing to start: {exc}") from None
    try:  # a device or dtype this machine cannot run: one line too, before any model loads
        device = resolve_device(settings.device)
        serving_dtype(device, settings.dtype)
        retrieval_int8(device, settings.dtype, settings.retrieval_int8)
    except (RuntimeError, ValueError) as exc:
        raise SystemExit(f"refusing to start: {exc}") from None
    _configure_logging(settings)
    loop, http = server_impl()
    logger.info("uvicorn: loop %s, http %s, %d worker(s)", loop, http, settings.workers)
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "access_log": settings.access_log,
        "loop": loop,
        "http": http,
        # Let in-flight requests finish on SIGTERM before the lifespan releases the models.
        "timeout_graceful_shutdown": max(1, round(settings.request_timeout_s * 2)),
    }
    if settings.workers > 1:
        # uvicorn starts worker processes only from an import string; each builds its own app
        uvicorn.run("service.__main__:worker_app", factory=True, workers=settings.workers, **common)
    else:
        uvicorn.run(create_app(settings), **common)


if __name__ == "__main__":
    main()
