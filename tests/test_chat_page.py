"""The chat page at GET /: served from service/static/ with no build step and no third-party
assets; (slow) in headless Chromium it sends a message to POST /respond with a session id, shows
the reply with its backend and latency, and forces the other backend."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from service_fixtures import build_tiny_bundles, make_settings

from service.app import create_app

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
# Headless, and nothing that phones home (the test blocks every other origin anyway).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bundles(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def client(models_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(models_dir))) as c:
        yield c


class _Assets(HTMLParser):
    """Collects the src/href of every element and the ids in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.ids: set[str] = set()
        self.options: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.urls += [v for k, v in attrs if k in ("src", "href") and v is not None]
        if values.get("id"):
            self.ids.add(str(values["id"]))
        if tag == "option":
            self.options.append(values.get("value"))


def test_get_root_returns_the_chat_page(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assets = _Assets()
    assets.feed(page.text)
    assert {"conversation", "composer", "message", "send", "backend", "session-id"} <= assets.ids
    assert assets.options == ["", "generative", "retrieval"]  # A/B, or force one backend
    assert "/static/app.js" in assets.urls and "/static/style.css" in assets.urls


def test_chat_page_assets_are_served_and_load_nothing_from_other_origins(
    client: TestClient,
) -> None:
    assets = _Assets()
    assets.feed(client.get("/").text)
    for url in assets.urls:
        assert url.startswith("/static/") or url.startswith("data:"), url
        if url.startswith("/static/"):
            assert client.get(url).status_code == 200, url
    script = client.get("/static/app.js")
    assert script.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert 'fetch("/respond"' in script.text and "session_id" in script.text
    assert "innerHTML" not in script.text  # replies are shown as text, never parsed as HTML
    assert not re.search(r"https?://", script.text)
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")


def test_chat_page_stays_out_of_the_api_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/static") for p in paths)


# --- headless Chromium against `python -m service` (slow) -------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def live_service(models_dir: Path, cwd: Path) -> Iterator[str]:
    """``python -m service`` on a free port, configured as the images do (DIALOGUE_* env)."""
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "DIALOGUE_MODELS_DIR": str(models_dir),
        "DIALOGUE_HOST": "127.0.0.1",
        "DIALOGUE_PORT": str(port),
        "DIALOGUE_DEVICE": "cpu",
        "DIALOGUE_MAX_WAIT_MS": "1",
        "DIALOGUE_LOG_LEVEL": "warning",
    }
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "service"],
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not _ready(url):
            if process.poll() is not None:
                pytest.fail(f"service exited with {process.returncode}: {process.stderr}")
            if time.monotonic() > deadline:
                pytest.fail("service not ready within 120 s")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_chat_page_in_chromium_replies_with_backend_and_latency_then_forces_the_other(
    models_dir: Path, tmp_path: Path
) -> None:
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} not found (Debian package `chromium`)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")

    with live_service(models_dir, tmp_path) as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            foreign: list[str] = []
            console_errors: list[str] = []

            def only_the_service(route: Any) -> None:
                if route.request.url.startswith(url):
                    route.continue_()
                else:
                    foreign.append(route.request.url)
                    route.abort()

            def on_console(message: Any) -> None:
                if message.type == "error":
                    console_errors.append(message.text)

            page.route("**/*", only_the_service)
            page.on("console", on_console)
            page.on("pageerror", lambda e: console_errors.append(str(e)))
            page.goto(f"{url}/")
            session_id = page.text_content("#session-id")
            assert session_id and re.fullmatch(r"chat-[0-9a-f]{24}", session_id)

            def send(text: str) -> tuple[dict[str, Any], dict[str, Any]]:
                """Type and send ``text``; returns the JSON the page POSTed and the reply."""
                page.fill("#message", text)
                with page.expect_response(f"{url}/respond") as answer:
                    page.click("#send")
                assert answer.value.status == 200
                return answer.value.request.post_data_json, answer.value.json()

            # 1. A/B: no backend in the request; the reply says which backend and how long
            sent, received = send("hello , how are you ?")
            assert sent == {"context": ["hello , how are you ?"], "session_id": session_id}
            replies = page.locator(".message.bot")
            replies.first.wait_for()
            first = replies.nth(0)
            backend = first.locator(".backend").text_content()
            assert backend in ("generative", "retrieval")
            assert re.fullmatch(r"\d+\.\d ms", first.locator(".latency").text_content() or "")
            assert re.fullmatch(
                r"(generator-nd|retriever-g2r)@\w+", first.locator(".model").inner_text()
            )
            assert first.locator(".arm").count() == 0  # answered by its own arm

            # 2. Force the other backend: same session, the whole conversation as context
            other = "retrieval" if backend == "generative" else "generative"
            page.select_option("#backend", other)
            assert received["backend"] == backend
            # an empty reply (a random-weight generator may give one) is left out of the context
            reply = [received["response"]] if received["response"].strip() else []
            sent, received = send("what time is it ?")
            assert sent == {
                "context": ["hello , how are you ?", *reply, "what time is it ?"],
                "session_id": session_id,
                "backend": other,
            }
            replies.nth(1).wait_for()
            second = replies.nth(1)
            assert second.locator(".backend").text_content() == other == received["backend"]
            assert second.locator(".arm").text_content() == "arm override"
            assert re.fullmatch(r"\d+\.\d ms", second.locator(".latency").text_content() or "")
            assert page.locator(".message.user").count() == 2
            assert page.locator(".message.error").count() == 0
        finally:
            browser.close()
    assert foreign == [], "the page must not load anything from another origin"
    assert console_errors == []


def test_chat_page_has_a_hint_for_an_empty_conversation(client: TestClient) -> None:
    page = client.get("/").text
    hint = re.search(r'<p id="hint">(.*?)</p>', page, re.S)
    assert hint is not None
    text = re.sub(r"<[^>]+>", "", hint.group(1))
    assert "generative" in text and "retrieval" in text and len(text) < 200
    # shown only while the conversation is empty: pure CSS, so a new conversation shows it again
    assert (
        "#conversation:not(:empty) ~ #hint { display: none; }"
        in client.get("/static/style.css").text
    )


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


# A phone, a tablet, a laptop; heights of common devices at those widths.
VIEWPORTS = [(390, 844), (768, 1024), (1200, 800)]
LONG_URL = "https://example.com/" + "segment/" * 40  # 340 characters, no space
LONG_TOKEN = "y" * 600  # one unbroken token (the service takes up to 1,000 characters a turn)


@pytest.mark.slow
def test_chat_page_fits_phone_tablet_and_laptop_widths_with_long_tokens(
    models_dir: Path, tmp_path: Path
) -> None:
    """At 390, 768 and 1200 px: the hint shows in an empty conversation, a long URL and a long
    unbroken token wrap inside their bubbles, nothing widens the page, and the input and the Send
    button stay on screen. Screenshots go to $CHAT_SCREENSHOTS (else a temporary folder)."""
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} not found (Debian package `chromium`)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    shots = Path(os.environ.get("CHAT_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)

    with live_service(models_dir, tmp_path) as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for width, height in VIEWPORTS:
                page = browser.new_page(viewport={"width": width, "height": height})
                page.route(
                    "**/*",
                    lambda route: (
                        route.continue_() if route.request.url.startswith(url) else route.abort()
                    ),
                )
                page.goto(f"{url}/")
                hint = page.locator("#hint")
                assert hint.is_visible() and "retrieval" in (hint.text_content() or "")
                page.screenshot(path=str(shots / f"chat-{width}-empty.png"))

                for text in (f"look at {LONG_URL} please", LONG_TOKEN):
                    page.fill("#message", text)
                    with page.expect_response(f"{url}/respond") as answer:
                        page.click("#send")
                    assert answer.value.status == 200
                page.locator(".message.bot").nth(1).wait_for()
                assert not hint.is_visible()

                layout = page.evaluate(
                    """() => {
                      const box = (el) => el.getBoundingClientRect().toJSON();
                      return {
                        scrollWidth: document.documentElement.scrollWidth,
                        innerWidth: window.innerWidth,
                        innerHeight: window.innerHeight,
                        messages: [...document.querySelectorAll('.message')].map(box),
                        texts: [...document.querySelectorAll('.message .text')].map(
                          (el) => [el.scrollWidth, el.clientWidth]),
                        input: box(document.getElementById('message')),
                        send: box(document.getElementById('send')),
                        backend: box(document.getElementById('backend')),
                      };
                    }"""
                )
                where = f"at {width} px: {layout}"
                assert layout["scrollWidth"] <= layout["innerWidth"], where  # no sideways scroll
                assert len(layout["messages"]) == 4, where
                for message in layout["messages"]:
                    assert message["left"] >= 0 and message["right"] <= width, where
                for scroll_width, client_width in layout["texts"]:
                    assert scroll_width <= client_width, where  # wrapped, not clipped
                for control in ("input", "send", "backend"):
                    box = layout[control]
                    assert box["left"] >= 0 and box["right"] <= width, where
                    assert box["top"] >= 0 and box["bottom"] <= layout["innerHeight"], where
                assert layout["input"]["width"] >= min(240, width / 2), where
                page.screenshot(path=str(shots / f"chat-{width}.png"))
                page.close()
        finally:
            browser.close()
    for width, height in VIEWPORTS:
        for name in (f"chat-{width}-empty.png", f"chat-{width}.png"):
            assert _png_size(shots / name) == (width, height)


@pytest.mark.slow
def test_api_docs_render_in_chromium_with_every_outside_request_blocked(
    models_dir: Path, tmp_path: Path
) -> None:
    """/docs (Swagger UI) and /redoc (ReDoc) draw the API from assets this server serves
    (service/docs_assets.py): with every other origin blocked, both show POST /respond."""
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} not found (Debian package `chromium`)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    shots = Path(os.environ.get("CHAT_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    foreign: list[str] = []
    errors: list[str] = []

    with live_service(models_dir, tmp_path) as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})

            def only_the_service(route: Any) -> None:
                if route.request.url.startswith((url, "data:", "blob:")):
                    route.continue_()
                else:
                    foreign.append(route.request.url)
                    route.abort()

            page.route("**/*", only_the_service)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{url}/docs")
            path = page.locator(".opblock-summary-path", has_text="/respond").first
            path.wait_for(timeout=30_000)
            assert page.locator(".opblock").count() >= 4  # respond, healthz, readyz, models
            page.screenshot(path=str(shots / "docs.png"))
            page.goto(f"{url}/redoc")
            page.get_by_text("Answer a conversation", exact=False).first.wait_for(timeout=30_000)
            page.screenshot(path=str(shots / "redoc.png"))
        finally:
            browser.close()
    assert foreign == [], "the docs must not load anything from another origin"
    assert errors == []


def test_chat_page_script_rates_replies_and_ends_sessions(client: TestClient) -> None:
    script = client.get("/static/app.js").text
    assert 'fetch("/feedback"' in script and "request_id" in script
    assert 'navigator.sendBeacon("/feedback"' in script and 'event: "end"' in script
    assert "aria-pressed" in script and 'role", "status"' in script


@pytest.mark.slow
def test_chat_page_in_chromium_rates_a_reply_with_the_keyboard(
    models_dir: Path, tmp_path: Path
) -> None:
    """Thumbs up/down under a reply: reached with Tab, pressed with Enter, POST /feedback with the
    reply's request_id, the pressed one marked (aria-pressed) and the rating said to be recorded;
    a second rating replaces the first; a new conversation ends the session."""
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} not found (Debian package `chromium`)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")

    with live_service(models_dir, tmp_path) as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{url}/")
            page.fill("#message", "hello , how are you ?")
            with page.expect_response(f"{url}/respond") as answer:
                page.click("#send")
            request_id = answer.value.json()["request_id"]
            reply = page.locator(".message.bot").first
            up = reply.locator("button.rate-up")
            down = reply.locator("button.rate-down")
            assert up.get_attribute("aria-label") == "Good reply"
            assert up.get_attribute("aria-pressed") == "false"
            up.focus()  # a button: in the tab order, Enter presses it
            with page.expect_response(f"{url}/feedback") as rated:
                page.keyboard.press("Enter")
            assert rated.value.request.post_data_json == {"request_id": request_id, "rating": "up"}
            assert rated.value.json() == {
                "recorded": "rating",
                "request_id": request_id,
                "matched": True,
                "replaced": False,
            }
            status = reply.locator(".feedback-status")
            page.wait_for_function(
                "el => el.textContent.includes('rated good')", arg=status.element_handle()
            )
            assert up.get_attribute("aria-pressed") == "true"
            assert status.get_attribute("role") == "status"
            page.keyboard.press("Tab")  # to thumbs down
            with page.expect_response(f"{url}/feedback") as rated:
                page.keyboard.press("Enter")
            assert rated.value.json()["replaced"] is True
            page.wait_for_function(
                "el => el.textContent.includes('rated bad')", arg=status.element_handle()
            )
            assert (up.get_attribute("aria-pressed"), down.get_attribute("aria-pressed")) == (
                "false",
                "true",
            )
            with page.expect_request(f"{url}/feedback"):
                page.click("#new-session")  # a beacon: its body is not shown to the page
            deadline = time.monotonic() + 10
            ended = 0.0
            while ended < 1 and time.monotonic() < deadline:
                with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
                    text = response.read().decode()
                ended = sum(
                    float(line.rsplit(" ", 1)[1])
                    for line in text.splitlines()
                    if line.startswith("dialogue_sessions_ended_total{")
                )
                time.sleep(0.1)
            assert ended == 1  # the session end reached the service, once
        finally:
            browser.close()
    assert errors == []
