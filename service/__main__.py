"""``python -m service``: serve the app with uvicorn; settings from DIALOGUE_* or .env."""

from __future__ import annotations

import logging

import uvicorn
from pydantic import ValidationError

from service.app import create_app
from service.settings import Settings


def main() -> None:
    try:
        settings = Settings()
    except ValidationError as exc:  # one clear message, not a traceback; inputs are not echoed
        raise SystemExit(f"refusing to start: {exc}") from None
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # Let in-flight requests finish on SIGTERM before the lifespan releases the models.
        timeout_graceful_shutdown=max(1, round(settings.request_timeout_s * 2)),
    )


if __name__ == "__main__":
    main()
