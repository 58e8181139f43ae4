"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) that work without internet.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, so they stay blank on a machine or a
deployment with no way out. Here the same pages load the assets from this server: the JavaScript,
CSS and favicon shipped by the ``fastapi-offline`` package (PyPI, in the ``serve`` extra), mounted
at ``/docs-assets``. Swagger UI's online validator badge is off, and both pages carry a
Content-Security-Policy that lets the browser fetch from this server only: ReDoc's sidebar
otherwise requests the Redocly logo from its CDN (it hides the image when that fails).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_ASSETS_URL = "/docs-assets"
SWAGGER_JS = "swagger-ui-bundle.js"
SWAGGER_CSS = "swagger-ui.css"
REDOC_JS = "redoc.standalone.js"
FAVICON = "favicon.png"
# Both pages run inline scripts and styles; ReDoc starts its search worker from a blob: URL.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; worker-src 'self' blob:; "
    "connect-src 'self'"
)


def docs_assets_dir() -> Path:
    """The folder of Swagger UI and ReDoc assets inside the installed ``fastapi-offline``."""
    try:
        import fastapi_offline
    except ImportError as exc:  # the serve extra was not installed
        raise RuntimeError(
            "the API docs need the fastapi-offline package (pip install -e '.[serve]')"
        ) from exc
    folder = Path(fastapi_offline.__file__).resolve().parent / "static"
    missing = [
        f for f in (SWAGGER_JS, SWAGGER_CSS, REDOC_JS, FAVICON) if not (folder / f).is_file()
    ]
    if missing:
        raise RuntimeError(f"fastapi-offline at {folder} lacks {', '.join(missing)}")
    return folder


def serve_docs_offline(app: FastAPI) -> None:
    """Replace ``app``'s CDN-backed ``/docs``, its OAuth2 redirect and ``/redoc`` (at whatever
    URLs the app has them) with pages that load their assets from ``/docs-assets``."""
    docs_url, redoc_url = app.docs_url, app.redoc_url
    oauth2_url = app.swagger_ui_oauth2_redirect_url if docs_url else None
    openapi_url = app.openapi_url
    replaced = {u for u in (docs_url, redoc_url, oauth2_url) if u}
    app.router.routes[:] = [
        r for r in app.router.routes if getattr(r, "path", None) not in replaced
    ]
    if openapi_url is None or not replaced:
        return
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=docs_assets_dir()), name="docs-assets")

    def asset(request: Request, name: str) -> str:
        return f"{request.scope.get('root_path', '')}{DOCS_ASSETS_URL}/{name}"

    if docs_url:

        @app.get(docs_url, include_in_schema=False)
        async def swagger_ui(request: Request) -> HTMLResponse:
            root = request.scope.get("root_path", "")
            page = get_swagger_ui_html(
                openapi_url=f"{root}{openapi_url}",
                title=f"{app.title} - Swagger UI",
                swagger_js_url=asset(request, SWAGGER_JS),
                swagger_css_url=asset(request, SWAGGER_CSS),
                swagger_favicon_url=asset(request, FAVICON),
                oauth2_redirect_url=f"{root}{oauth2_url}" if oauth2_url else None,
                init_oauth=app.swagger_ui_init_oauth,
                # No badge fetched from validator.swagger.io; an app setting wins.
                swagger_ui_parameters={"validatorUrl": None, **(app.swagger_ui_parameters or {})},
            )
            page.headers["Content-Security-Policy"] = DOCS_CSP
            return page

        if oauth2_url:

            @app.get(oauth2_url, include_in_schema=False)
            async def swagger_ui_redirect() -> HTMLResponse:
                return get_swagger_ui_oauth2_redirect_html()

    if redoc_url:

        @app.get(redoc_url, include_in_schema=False)
        async def redoc(request: Request) -> HTMLResponse:
            page = get_redoc_html(
                openapi_url=f"{request.scope.get('root_path', '')}{openapi_url}",
                title=f"{app.title} - ReDoc",
                redoc_js_url=asset(request, REDOC_JS),
                redoc_favicon_url=asset(request, FAVICON),
                with_google_fonts=False,
            )
            page.headers["Content-Security-Policy"] = DOCS_CSP
            return page
