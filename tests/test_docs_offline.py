"""/docs and /redoc load Swagger UI and ReDoc from this server (service/docs_assets.py), never
from a CDN: the pages work on a machine without internet."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from service_fixtures import make_settings

from service.app import create_app
from service.docs_assets import DOCS_ASSETS_URL, docs_assets_dir, serve_docs_offline


class _Urls(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]


def _page_urls(html: str) -> list[str]:
    parser = _Urls()
    parser.feed(html)
    # Swagger UI's bundle and CSS are named in the inline script too
    return parser.urls + re.findall(r"""url: ['"]([^'"]+)['"]""", html)


def _check_docs_pages(client: TestClient) -> None:
    for page, assets in (
        ("/docs", {"swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"}),
        ("/redoc", {"redoc.standalone.js", "favicon.png"}),
    ):
        response = client.get(page)
        assert response.status_code == 200 and response.headers["content-type"].startswith(
            "text/html"
        )
        assert "cdn." not in response.text and "fonts.googleapis" not in response.text
        # the browser may fetch from this server only (ReDoc would fetch the Redocly logo)
        csp = response.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "img-src 'self' data: blob:" in csp
        assert "http" not in csp and "*" not in csp
        urls = _page_urls(response.text)
        assert not [u for u in urls if u.startswith(("http:", "https:", "//"))], urls
        names = {u.rsplit("/", 1)[-1] for u in urls if u.startswith(DOCS_ASSETS_URL + "/")}
        assert assets <= names, (page, urls)
        for name in assets:
            asset = client.get(f"{DOCS_ASSETS_URL}/{name}")
            assert asset.status_code == 200, name
            assert len(asset.content) == (docs_assets_dir() / name).stat().st_size
            if name.endswith(".js"):
                assert len(asset.content) > 500_000  # the real bundles, not a placeholder
                assert "javascript" in asset.headers["content-type"]
    assert client.get("/openapi.json").status_code == 200
    assert '"validatorUrl": null' in client.get("/docs").text  # no badge from swagger.io


def test_plain_fastapi_app_serves_its_docs_from_the_package() -> None:
    app = FastAPI(title="Toy")

    @app.get("/ping")
    def ping() -> dict[str, str]:
        return {"ok": "yes"}

    serve_docs_offline(app)
    client = TestClient(app)
    _check_docs_pages(client)
    assert client.get("/docs/oauth2-redirect").status_code == 200
    assert "/docs" not in client.get("/openapi.json").json()["paths"]
    # exactly one route per page: FastAPI's CDN pages are gone, not shadowed
    paths = [getattr(r, "path", None) for r in app.routes]
    assert paths.count("/docs") == paths.count("/redoc") == 1


def test_an_app_without_docs_gets_no_docs_and_no_assets() -> None:
    app = FastAPI(docs_url=None, redoc_url=None)
    serve_docs_offline(app)
    client = TestClient(app)
    assert client.get("/docs").status_code == 404
    assert client.get(f"{DOCS_ASSETS_URL}/swagger-ui.css").status_code == 404


def test_the_service_serves_docs_without_a_cdn(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path))  # no lifespan: no models needed for the docs
    _check_docs_pages(TestClient(app))


@pytest.mark.parametrize("name", ["swagger-ui-bundle.js", "redoc.standalone.js"])
def test_assets_are_the_real_libraries(name: str) -> None:
    text = (docs_assets_dir() / name).read_text(errors="replace")
    assert ("SwaggerUIBundle" if name.startswith("swagger") else "Redoc") in text
