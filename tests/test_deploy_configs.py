"""Deployment configs (docker/, docker-compose.yml, .dockerignore): they parse and agree with each
other, the Grafana dashboard queries only metrics the service exports, and (slow) a real
Prometheus scrapes a running ``python -m service`` and evaluates every dashboard query.

No Docker engine here: the images are checked by reading their Dockerfiles.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from service_fixtures import build_tiny_bundles, make_settings

from service.app import create_app

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "dialogue.json"
SERVICE_IMAGES = ("Dockerfile.cpu", "Dockerfile.gpu")
DOCKERFILES = (*SERVICE_IMAGES, "Dockerfile.trainer")
# Every metric family of docs/design.md, "Metrics", as the dashboard must show it.
SERVICE_METRICS = (
    "dialogue_requests_total",
    "dialogue_request_duration_seconds_bucket",
    "dialogue_stage_duration_seconds_bucket",
    "dialogue_batch_size_bucket",
    "dialogue_generated_tokens_total",
    "dialogue_fallbacks_total",
    "dialogue_model_info",
    "dialogue_response_max_ratio",
    "dialogue_response_distinct_2",
    "dialogue_safety_blocked_total",
)
# Series Prometheus itself writes for every target; the service cannot export them.
PROMETHEUS_SYNTHETIC = {"up"}


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _yaml(ROOT / "docker-compose.yml")


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bundles(tmp_path_factory.mktemp("models"))


# --- PromQL ----------------------------------------------------------------------------------

_PROMQL_NOT_METRICS = [
    re.compile(r'"(?:[^"\\]|\\.)*"'),  # string literals
    re.compile(r"\{[^}]*\}"),  # label matchers
    re.compile(r"\[[^\]]*\]"),  # range selectors, e.g. [$__rate_interval]
    re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"),  # label lists
]
# An identifier that is not part of a longer one, a number or a variable, and not a function call.
_PROMQL_IDENT = re.compile(r"(?<![\w:.$])[a-zA-Z_:][\w:]*(?![\w:])(?!\s*\()")
_PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (functions, labels and keywords removed)."""
    for pattern in _PROMQL_NOT_METRICS:
        expr = pattern.sub(" ", expr)
    return {n for n in _PROMQL_IDENT.findall(expr) if n.lower() not in _PROMQL_KEYWORDS}


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of every panel (rows included)."""
    panels = list(dashboard["panels"])
    for panel in list(panels):
        panels += panel.get("panels", [])
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def exported_metric_names(exposition: str) -> set[str]:
    """Sample names the exposition declares: each ``# TYPE`` family, a histogram's three series,
    and every sample present (so unlabelled children that never fired still count)."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names |= (
                {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
                if kind == "histogram"
                else {name}
            )
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_promql_metric_names_skips_functions_labels_and_numbers() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (backend, le) (rate(dialogue_request_duration_seconds_bucket"
        '{outcome!="ok", arm=~"a|b"}[$__rate_interval]))) / ignoring(le) group_left(model) '
        "max without (instance) (dialogue_model_info) > bool 1e3 or up"
    )
    assert promql_metric_names(expr) == {
        "dialogue_request_duration_seconds_bucket",
        "dialogue_model_info",
        "up",
    }


# --- docker-compose.yml --------------------------------------------------------------------


def test_compose_defines_trainer_api_gpu_api_prometheus_and_grafana(
    compose: dict[str, Any],
) -> None:
    assert set(compose["services"]) == {"trainer", "api", "api-gpu", "prometheus", "grafana"}
    assert set(compose["volumes"]) >= {"bundles", "training-runs", "prometheus-data"}


def test_compose_trainer_is_one_shot_with_corpus_read_only_from_configurable_path(
    compose: dict[str, Any],
) -> None:
    trainer = compose["services"]["trainer"]
    assert trainer["restart"] == "no"
    assert "bundles:/artifacts" in trainer["volumes"]
    (data,) = [v for v in trainer["volumes"] if isinstance(v, dict)]
    assert data == {
        "type": "bind",
        "source": "${DIALOGUE_DATA_DIR:-../shared/data}",
        "target": "/data",
        "read_only": True,
    }


@pytest.mark.parametrize("name", ["api", "api-gpu"])
def test_compose_api_waits_for_trainer_and_mounts_bundles_read_only(
    compose: dict[str, Any], name: str
) -> None:
    api = compose["services"][name]
    assert api["depends_on"] == {"trainer": {"condition": "service_completed_successfully"}}
    # bundles read-only; the A/B exposure and feedback logs in their own volume, where the
    # image's /logs (owned by the service user) makes a fresh volume writable
    assert api["volumes"] == ["bundles:/models:ro", "ab-logs:/logs"]
    assert "ab-logs" in compose["volumes"]
    assert api["environment"]["DIALOGUE_MODELS_DIR"] == "/models"
    assert api["environment"]["DIALOGUE_EXPOSURE_LOG_DIR"] == "${DIALOGUE_EXPOSURE_LOG_DIR:-/logs}"
    assert api["environment"]["DIALOGUE_HOST"] == "0.0.0.0"
    # a host port range, so `--scale api=N` does not collide on one port; on 127.0.0.1 by default
    (ports,) = api["ports"]
    assert re.fullmatch(
        r"\$\{DIALOGUE_BIND_ADDRESS:-127\.0\.0\.1\}:\$\{\w+:-\d+-\d+\}:8000", ports
    ), ports


def test_compose_api_is_cpu_by_default_and_gpu_only_in_its_profile(
    compose: dict[str, Any],
) -> None:
    api, gpu = compose["services"]["api"], compose["services"]["api-gpu"]
    assert "profiles" not in api and api["environment"]["DIALOGUE_DEVICE"] == "cpu"
    assert api["build"]["dockerfile"] == "docker/Dockerfile.cpu"
    assert gpu["profiles"] == ["gpu"] and gpu["environment"]["DIALOGUE_DEVICE"] == "cuda"
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    assert gpu["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    ]


def test_compose_build_files_and_bind_mounted_configs_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if "build" in service:
            assert service["build"]["context"] == "."
            assert (ROOT / service["build"]["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            if isinstance(volume, str) and volume.startswith("./"):
                assert (ROOT / volume.split(":")[0]).exists(), f"{name}: {volume}"


# --- Dockerfiles and .dockerignore -----------------------------------------------------------


def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (DOCKER / dockerfile).read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [
        (word.upper(), rest.strip())
        for word, _, rest in (line.strip().partition(" ") for line in joined.splitlines())
        if word
    ]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_runs_as_a_fixed_non_root_user(dockerfile: str) -> None:
    users = [args for word, args in _instructions(dockerfile) if word == "USER"]
    assert users == ["10001:10001"], "one USER: the uid every image shares for the bundles volume"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_never_copies_bundles_checkpoints_or_data(dockerfile: str) -> None:
    copies = [args for word, args in _instructions(dockerfile) if word in ("COPY", "ADD")]
    assert copies, dockerfile
    for args in copies:
        assert not re.search(r"\b(artifacts|runs|data)/", args), f"{dockerfile}: {args}"


@pytest.mark.parametrize("dockerfile", SERVICE_IMAGES)
def test_service_dockerfile_checks_readyz_and_serves_on_all_interfaces(dockerfile: str) -> None:
    instructions = _instructions(dockerfile)
    (check,) = [args for word, args in instructions if word == "HEALTHCHECK"]
    assert "/readyz" in check and "CMD" in check
    assert ("CMD", '["python", "-m", "service"]') in instructions
    env = " ".join(args for word, args in instructions if word == "ENV")
    assert "DIALOGUE_HOST=0.0.0.0" in env and "DIALOGUE_MODELS_DIR=/models" in env
    assert ("EXPOSE", "8000") in instructions


def test_gpu_dockerfile_uses_cuda_runtime_cuda_torch_and_faiss_gpu() -> None:
    instructions = _instructions("Dockerfile.gpu")
    args = dict(a.split("=", 1) for word, a in instructions if word == "ARG" and "=" in a)
    assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-runtime-ubuntu\d+\.\d+", args["CUDA_IMAGE"])
    assert args["TORCH_INDEX"].startswith("https://download.pytorch.org/whl/cu12")
    assert args["FAISS_SPEC"].startswith("faiss-gpu")
    run = " ".join(a for word, a in instructions if word == "RUN")
    assert "--drop faiss-cpu" in run and '"${FAISS_SPEC}"' in run


def test_trainer_dockerfile_builds_bundles_only_when_absent() -> None:
    instructions = _instructions("Dockerfile.trainer")
    assert ("ENTRYPOINT", '["/usr/local/bin/train-if-absent"]') in instructions
    script = (DOCKER / "train-if-absent.sh").read_text()
    assert "generator-nd/manifest.json" in script and "retriever-g2r/manifest.json" in script
    assert "python -m training build" in script


def test_dockerignore_keeps_bundles_data_and_secrets_out_of_the_context() -> None:
    patterns = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert patterns >= {"artifacts/", "runs/", ".venv/", ".git/", ".env"}
    # what the Dockerfiles COPY must stay in the context
    assert not patterns & {"models/", "service/", "training/", "pyproject.toml", "docker/"}


def test_requirements_script_reads_pyproject_and_drops_separate_installs() -> None:
    spec = importlib.util.spec_from_file_location("image_requirements", DOCKER / "requirements.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    wanted = module.requirements(ROOT / "pyproject.toml", ["serve"], ["Torch", "faiss_cpu"])
    names = {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in wanted}
    assert {"fastapi", "uvicorn", "prometheus-client", "numpy"} <= names
    assert not names & {"torch", "faiss-cpu", "matplotlib", "pytest"}


# --- Prometheus ------------------------------------------------------------------------------


def test_prometheus_config_discovers_every_api_replica() -> None:
    config = _yaml(DOCKER / "prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "dialogue-api"]
    assert job["metrics_path"] == "/metrics"
    assert job["dns_sd_configs"] == [
        {"names": ["api", "api-gpu"], "type": "A", "port": 8000, "refresh_interval": "15s"}
    ]


def test_promtool_check_config_passes() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not on PATH (Debian package `prometheus`)")
    result = subprocess.run(
        [promtool, "check", "config", str(DOCKER / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- Grafana ---------------------------------------------------------------------------------


def test_grafana_provisioning_matches_compose_and_dashboard(
    compose: dict[str, Any], dashboard: dict[str, Any]
) -> None:
    (datasource,) = _yaml(DOCKER / "grafana/provisioning/datasources/prometheus.yml")["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert "prometheus" in compose["services"]
    (provider,) = _yaml(DOCKER / "grafana/provisioning/dashboards/dialogue.yml")["providers"]
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./docker/grafana/dashboards:{provider['options']['path']}:ro" in mounts
    assert "./docker/grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    for panel in panels:
        sources = [panel["datasource"], *(t["datasource"] for t in panel["targets"])]
        assert all(s == {"type": "prometheus", "uid": datasource["uid"]} for s in sources)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_shows_every_service_metric(dashboard: dict[str, Any]) -> None:
    shown = set().union(*(promql_metric_names(e) for e in dashboard_exprs(dashboard)))
    assert shown >= set(SERVICE_METRICS)
    titles = {p["title"] for p in dashboard["panels"]}
    assert {
        "Request rate by arm and backend",
        "Latency per backend (p50 / p95 / p99)",
        "Stage latency p95",
        "Batch size",
        "Error, 429, 504 and fallback ratios",
        "Response max-ratio",
        "Response distinct-2",
        "Model info",
    } <= titles


def test_dashboard_queries_name_only_metrics_the_service_exports(
    dashboard: dict[str, Any], models_dir: Path
) -> None:
    with TestClient(create_app(make_settings(models_dir))) as client:
        for backend in ("retrieval", "generative"):
            reply = client.post("/respond", json={"context": ["hello"], "backend": backend})
            assert reply.status_code == 200
        exposition = client.get("/metrics").text
    exported = exported_metric_names(exposition) | PROMETHEUS_SYNTHETIC
    for expr in dashboard_exprs(dashboard):
        names = promql_metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= exported, f"{sorted(names - exported)} not exported; in {expr!r}"


# --- live: Prometheus scraping `python -m service` (slow) -------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _wait_until(ok: Any, what: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _, err = process.communicate()
            pytest.fail(f"{what}: process exited with {process.returncode}: {err.decode()[-2000:]}")
        try:
            if ok():
                return
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{what}: not within {timeout} s")


@contextmanager
def _running(args: list[str], env: dict[str, str], cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        args, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def live_service(models_dir: Path, cwd: Path) -> Iterator[str]:
    """``python -m service`` on a free port, configured as the images do (DIALOGUE_* env), with
    the safety filter on (a blocklist), so a turn stating a self-harm risk counts a block."""
    port = _free_port()
    blocklist = cwd / "blocklist.txt"
    blocklist.write_text("some phrase nobody says\n")
    env = {
        **os.environ,
        "DIALOGUE_SAFETY_BLOCKLIST": str(blocklist),
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
    with _running([sys.executable, "-m", "service"], env, cwd) as process:
        _wait_until(lambda: _get(f"{url}/readyz")[0] == 200, "service ready", process, 120)
        yield url


def _post_respond(url: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(
        f"{url}/respond", json.dumps(body).encode(), {"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


def _query(prometheus: str, expr: str) -> dict[str, Any]:
    status, body = _get(f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    answer: dict[str, Any] = json.loads(body)
    assert status == 200 and answer["status"] == "success", f"{expr!r}: {answer}"
    return answer["data"]


def _values(prometheus: str, expr: str) -> list[float]:
    """The sample values of an instant query (an empty list when it selects nothing)."""
    return [float(r["value"][1]) for r in _query(prometheus, expr)["result"]]


@pytest.mark.slow
def test_prometheus_scrapes_live_service_and_evaluates_every_dashboard_query(
    models_dir: Path, dashboard: dict[str, Any], tmp_path: Path
) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not on PATH (Debian package `prometheus`)")
    # docker/prometheus.yml's job, pointed at this host's service instead of the `api` DNS name
    config = _yaml(DOCKER / "prometheus.yml")
    config["global"].update(scrape_interval="1s", scrape_timeout="1s")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "dialogue-api"]
    port = _free_port()
    prometheus = f"http://127.0.0.1:{port}"
    with live_service(models_dir, tmp_path) as service:
        del job["dns_sd_configs"]
        job["static_configs"] = [{"targets": [service.removeprefix("http://")]}]
        config_file = tmp_path / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config))
        args = [
            binary,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        with _running(args, dict(os.environ), tmp_path) as process:
            _wait_until(
                lambda: bool(_query(prometheus, 'up{job="dialogue-api"} == 1')["result"]),
                "prometheus scraping the service",
                process,
                60,
            )
            # Two rounds a few scrapes apart, so every rate() sees its counters increase; each
            # round has one turn stating a self-harm risk, whose reply the filter replaces.
            for _ in range(2):
                for i, backend in enumerate(["retrieval", "generative"] * 3):
                    _post_respond(service, {"context": ["hello"], "backend": backend})
                    _post_respond(service, {"context": ["good morning"], "session_id": f"s{i}"})
                _post_respond(service, {"context": ["i want to die ."], "backend": "retrieval"})
                time.sleep(2.5)
            _wait_until(
                lambda: _values(prometheus, "sum(dialogue_requests_total)") == [26.0],
                "all 26 requests scraped",
                process,
                30,
            )
            answered: set[str] = set()
            for expr in dashboard_exprs(dashboard):
                values = _values(prometheus, expr.replace("$__rate_interval", "30s"))
                if any(v == v for v in values):  # at least one non-NaN sample
                    answered |= promql_metric_names(expr)
    # every metric the traffic above produces is queryable through the dashboard's expressions
    assert answered >= set(SERVICE_METRICS) - {"dialogue_fallbacks_total"}
    assert "up" in answered
