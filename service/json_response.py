"""JSON bodies of plain values (errors, the body-limit 413) rendered with orjson.

Responses with a pydantic model (POST /respond, /v1/*) are serialized by pydantic-core straight
to bytes (FastAPI's own fast path, or ``model_dump_json`` in service/routes.py), which is faster
than orjson over ``model_dump()``; what is left for orjson is the dicts built by hand. Without
orjson (it comes with the ``serve`` extra) the standard encoder writes the same JSON."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is a serve dependency
    orjson = None  # type: ignore[assignment]


def dumps(content: Any) -> bytes:
    """Compact UTF-8 JSON, as Starlette's JSONResponse writes it (no NaN or infinity)."""
    if orjson is not None:
        return orjson.dumps(content)
    return json.dumps(
        content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


class FastJSONResponse(JSONResponse):
    """JSONResponse rendered by :func:`dumps`."""

    def render(self, content: Any) -> bytes:
        return dumps(content)
