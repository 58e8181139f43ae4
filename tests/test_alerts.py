"""Prometheus alerting rules (docker/alerts.yml) and the dashboard's A/B panels.

- Pure Python (``make test``): every rule is an alert with a severity and templated annotations,
  or a recording rule; every metric, label and ``outcome`` value the rules and the dashboard name
  is one the service defines (read from :class:`service.metrics.ServiceMetrics` and from the
  engine's outcome mapping, never from a copied list); the 5xx and 429 rules select exactly the
  outcomes of 5xx and 429 errors; every alert has a firing and a quiet unit test; compose and
  docker/prometheus.yml load the rules; the README documents every alert.
- promtool (``make test`` where installed, ``make test-live`` always: it sets
  DIALOGUE_REQUIRE_PROMTOOL=1 after installing it): ``check rules``, ``test rules``, every
  dashboard expression parses, and the A/B panels' expressions compute the numbers they claim.
- Slow (``make test-live``): a real Prometheus loads the rules beside a running service and
  evaluates each without error.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import Metric
from test_deploy_configs import (
    PROMETHEUS_SYNTHETIC,
    _free_port,
    _get,
    _post_respond,
    _query,
    _running,
    _wait_until,
    dashboard_exprs,
    live_service,
    promql_metric_names,
)

from service.engine import _outcome
from service.errors import ServiceError
from service.metrics import ServiceMetrics

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
RULES = DOCKER / "alerts.yml"
RULE_TESTS = DOCKER / "alerts_test.yml"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "dialogue.json"
# Labels the compose Prometheus adds to every scraped series (docker/prometheus.yml).
TARGET_LABELS = {"job", "instance", "device"}
SEVERITIES = {"warning", "critical"}
ALERTS = {
    "DialogueLatencyP95High",
    "DialogueErrorRateHigh",
    "DialogueRequestsShed",
    "DialogueBackendGeneric",
    "DialogueArmShareDrift",
    "DialogueExposureLogDropping",
}


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    return [rule for group in _yaml(RULES)["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def alerts(rules: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in rules if "alert" in rule}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


# --- what the service defines ------------------------------------------------------------------


def service_series() -> dict[str, set[str]]:
    """Every sample name the service's registry can expose, with its label names (a counter's
    ``_total``, a histogram's ``_bucket``/``_sum``/``_count``, ``le`` on buckets)."""
    metrics = ServiceMetrics()
    series: dict[str, set[str]] = {}
    for name, value in vars(metrics).items():
        if value is metrics.registry or not hasattr(value, "_labelnames"):
            continue
        labels = set(value._labelnames)
        families: list[Metric] = value.describe()
        assert len(families) == 1, name
        family = families[0]
        if family.type == "counter":
            series[f"{family.name}_total"] = labels
        elif family.type == "histogram":
            series[f"{family.name}_bucket"] = labels | {"le"}
            series[f"{family.name}_sum"] = series[f"{family.name}_count"] = labels
        else:
            series[family.name] = labels
    return series


def _error_classes() -> list[type[ServiceError]]:
    found, todo = [], [ServiceError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return found


def outcomes_by_status() -> dict[str, set[int]]:
    """The ``outcome`` label of every ServiceError (service/engine.py, _outcome) with the HTTP
    statuses it stands for; ``ok`` for an answer."""
    outcomes: dict[str, set[int]] = {"ok": {200}}
    for cls in _error_classes():
        outcome = _outcome(cls.__new__(cls))  # _outcome reads only the class
        outcomes.setdefault(outcome, set()).add(cls.status_code)
    return outcomes


# --- PromQL matchers ---------------------------------------------------------------------------

_SELECTOR = re.compile(r"(?<![\w:])([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def selectors(expr: str) -> list[tuple[str, str, str, str]]:
    """``(metric, label, operator, value)`` of every label matcher on a named metric."""
    return [
        (metric, *matcher)
        for metric, body in _SELECTOR.findall(expr)
        for matcher in _MATCHER.findall(body)
    ]


def matched_values(expr: str, metric: str, label: str) -> set[str]:
    """The values ``label`` is matched to (``=`` and ``=~`` alternatives) on ``metric``."""
    values: set[str] = set()
    for name, lab, op, value in selectors(expr):
        if name == metric and lab == label and op in ("=", "=~"):
            values |= set(value.split("|")) if op == "=~" else {value}
    return values


def test_selectors_reads_matchers_of_named_metrics_only() -> None:
    expr = 'sum by (arm) (rate(x_total{a="1", b=~"u|v"}[5m])) and on (arm) group by (arm) (y)'
    assert selectors(expr) == [("x_total", "a", "=", "1"), ("x_total", "b", "=~", "u|v")]
    assert matched_values(expr, "x_total", "b") == {"u", "v"}


def all_exprs(rules: list[dict[str, Any]], dashboard: dict[str, Any]) -> list[str]:
    return [r["expr"] for r in rules] + dashboard_exprs(dashboard)


# --- the rules file ----------------------------------------------------------------------------


def test_rules_are_the_documented_alerts_and_their_recording_rules(
    rules: list[dict[str, Any]], alerts: dict[str, dict[str, Any]]
) -> None:
    assert set(alerts) == ALERTS
    for rule in rules:
        assert ("alert" in rule) != ("record" in rule), rule
        if "record" in rule:  # level:metric:operations
            assert re.fullmatch(r"[a-z_]+:dialogue_\w+:\w+", rule["record"]), rule["record"]


def test_every_alert_has_a_severity_and_templated_summary_and_description(
    alerts: dict[str, dict[str, Any]],
) -> None:
    for name, alert in alerts.items():
        assert alert["labels"]["severity"] in SEVERITIES, name
        annotations = alert["annotations"]
        assert set(annotations) == {"summary", "description"}, name
        for key in ("summary", "description"):
            assert re.search(r"\{\{.*(\$value|\$labels|query).*\}\}", annotations[key]), (name, key)
        assert "$value" in annotations["description"] or "query" in annotations["description"]


def test_rules_and_dashboard_name_only_metrics_and_labels_the_service_defines(
    rules: list[dict[str, Any]], dashboard: dict[str, Any]
) -> None:
    series = service_series()
    recorded = {r["record"] for r in rules if "record" in r}
    known = set(series) | recorded | PROMETHEUS_SYNTHETIC
    missing: set[str] = set()
    for expr in all_exprs(rules, dashboard):
        missing |= promql_metric_names(expr) - known
        for metric, label, _, _ in selectors(expr):
            if metric in series:
                assert label in series[metric] | TARGET_LABELS, f"{metric} has no {label!r}"
    assert not missing, f"not defined in service/metrics.py: {sorted(missing)}"


def test_outcome_values_in_rules_and_dashboard_are_ones_the_engine_reports(
    rules: list[dict[str, Any]], dashboard: dict[str, Any]
) -> None:
    outcomes = set(outcomes_by_status())
    for expr in all_exprs(rules, dashboard):
        used = matched_values(expr, "dialogue_requests_total", "outcome")
        assert used <= outcomes, f"{sorted(used - outcomes)} in {expr!r}"


def test_error_rule_counts_exactly_the_5xx_outcomes_and_shedding_rule_the_429(
    alerts: dict[str, dict[str, Any]],
) -> None:
    outcomes = outcomes_by_status()
    server_errors = {o for o, codes in outcomes.items() if any(c >= 500 for c in codes)}
    shed = {o for o, codes in outcomes.items() if 429 in codes}
    assert server_errors and shed == {"overloaded"}
    assert not server_errors & {o for o, codes in outcomes.items() if any(c < 500 for c in codes)}
    error_expr = alerts["DialogueErrorRateHigh"]["expr"]
    assert matched_values(error_expr, "dialogue_requests_total", "outcome") == server_errors
    shed_expr = alerts["DialogueRequestsShed"]["expr"]
    assert matched_values(shed_expr, "dialogue_requests_total", "outcome") == shed


def test_every_alert_has_a_unit_test_that_fires_it_and_one_that_does_not(
    alerts: dict[str, dict[str, Any]],
) -> None:
    suite = _yaml(RULE_TESTS)
    assert suite["rule_files"] == [RULES.name]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in suite["tests"]:
        assert case["input_series"], case["name"]
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
            for expected in check.get("exp_alerts") or []:
                severity = alerts[check["alertname"]]["labels"]["severity"]
                assert expected["exp_labels"]["severity"] == severity
                assert set(expected["exp_annotations"]) == {"summary", "description"}
    assert fires == set(alerts) and quiet == set(alerts)


def test_compose_prometheus_loads_the_rules_file() -> None:
    config = _yaml(DOCKER / "prometheus.yml")
    assert config["rule_files"] == [RULES.name]  # relative: beside the config file
    compose = _yaml(ROOT / "docker-compose.yml")
    mounts = compose["services"]["prometheus"]["volumes"]
    config_mount = "./docker/prometheus.yml:/etc/prometheus/prometheus.yml:ro"
    assert config_mount in mounts
    assert f"./docker/{RULES.name}:/etc/prometheus/{RULES.name}:ro" in mounts


def test_readme_alerts_section_names_every_alert_and_the_rules_file(
    alerts: dict[str, dict[str, Any]],
) -> None:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"^### Alerts\n(.*?)(?=^#{2,3} )", readme, re.S | re.M)
    assert match, "README has no '### Alerts' section"
    section = match.group(1)
    assert "docker/alerts.yml" in section and "promtool test rules" in section
    for name in alerts:
        assert name in section, name


# --- promtool ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        if os.environ.get("DIALOGUE_REQUIRE_PROMTOOL"):
            pytest.fail("promtool not on PATH, and DIALOGUE_REQUIRE_PROMTOOL is set")
        pytest.skip("promtool not on PATH (Debian package `prometheus`)")
    return binary


def _promtool(promtool: str, *args: str | Path) -> str:
    result = subprocess.run(
        [promtool, *map(str, args)], capture_output=True, text=True, timeout=120
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def test_promtool_check_rules(promtool: str, rules: list[dict[str, Any]]) -> None:
    output = _promtool(promtool, "check", "rules", RULES)
    assert f"SUCCESS: {len(rules)} rules found" in output


def test_promtool_test_rules(promtool: str) -> None:
    assert "SUCCESS" in _promtool(promtool, "test", "rules", RULE_TESTS)


def test_promtool_check_config_loads_the_rules(promtool: str) -> None:
    output = _promtool(promtool, "check", "config", DOCKER / "prometheus.yml")
    assert "1 rule files found" in output and f"Checking {RULES}" in output


def test_every_dashboard_expression_parses(
    promtool: str, dashboard: dict[str, Any], tmp_path: Path
) -> None:
    exprs = [e.replace("$__rate_interval", "1m") for e in dashboard_exprs(dashboard)]
    as_rules = [{"record": f"dashboard:expr:{i}", "expr": e} for i, e in enumerate(exprs)]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": as_rules}]}))
    assert f"SUCCESS: {len(exprs)} rules found" in _promtool(promtool, "check", "rules", path)


def _panel_exprs(dashboard: dict[str, Any], title: str) -> dict[str, str]:
    (panel,) = [p for p in dashboard["panels"] if p["title"] == title]
    return {t["refId"]: t["expr"] for t in panel["targets"]}


def test_ab_panels_compute_observed_share_configured_share_and_approval(
    promtool: str, dashboard: dict[str, Any], tmp_path: Path
) -> None:
    """On series with known rates (binary fractions, as promtool compares exactly): arms nd /
    standard / g2r weighted 1 : 1 : 6 on two replicas, answering 15 / 45 / 60 requests a minute
    (plus 60 overrides, outside the split); nd rated up 45 and down 15 a minute, g2r up 30 and
    down 30; neutral ratings and unmatched ones are left out of the approval rate."""
    labels = 'job="dialogue-api",device="cpu"'
    series = []
    for replica in ("172.18.0.5:8000", "172.18.0.6:8000"):
        for arm, weight in (("nd", 1), ("standard", 1), ("g2r", 6)):
            name = f'dialogue_arm_weight{{{labels},instance="{replica}",arm="{arm}"}}'
            series.append((name, f"{weight}x90"))
    replica = 'instance="172.18.0.5:8000"'
    for arm, per_minute in (("nd", 15), ("standard", 45), ("g2r", 60), ("override", 60)):
        name = f'dialogue_requests_total{{{labels},{replica},backend="generative",arm="{arm}",outcome="ok"}}'
        series.append((name, f"0+{per_minute}x90"))
    ratings = [("nd", "up", 45), ("nd", "down", 15), ("nd", "neutral", 5)]
    ratings += [("g2r", "up", 30), ("g2r", "down", 30), ("unmatched", "up", 7)]
    for arm, rating, per_minute in ratings:
        name = f'dialogue_feedback_total{{{labels},{replica},arm="{arm}",rating="{rating}"}}'
        series.append((name, f"0+{per_minute}x90"))
    share = _panel_exprs(dashboard, "Traffic share by arm: observed vs configured")
    approval = _panel_exprs(dashboard, "Approval rate by arm")

    def samples(values: dict[str, float]) -> list[dict[str, Any]]:
        return [{"labels": f'{{arm="{arm}"}}', "value": v} for arm, v in values.items()]

    suite = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series],
                "promql_expr_test": [
                    {
                        "expr": share["A"],
                        "eval_time": "80m",
                        "exp_samples": samples({"nd": 0.125, "standard": 0.375, "g2r": 0.5}),
                    },
                    {
                        "expr": share["B"],
                        "eval_time": "80m",
                        "exp_samples": samples({"nd": 0.125, "standard": 0.125, "g2r": 0.75}),
                    },
                    {
                        "expr": approval["A"],
                        "eval_time": "80m",
                        "exp_samples": samples({"nd": 0.75, "g2r": 0.5}),
                    },
                ],
            }
        ],
    }
    path = tmp_path / "dashboard_test.yml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    _promtool(promtool, "test", "rules", path)


# --- live: Prometheus evaluating the rules beside `python -m service` (slow) -------------------


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from service_fixtures import build_tiny_bundles

    return build_tiny_bundles(tmp_path_factory.mktemp("models"))


@pytest.mark.slow
def test_prometheus_evaluates_every_rule_against_a_live_service(
    models_dir: Path, rules: list[dict[str, Any]], tmp_path: Path
) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not on PATH (Debian package `prometheus`)")
    config = _yaml(DOCKER / "prometheus.yml")
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(RULES)]
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
            for i in range(8):
                _post_respond(service, {"context": ["hello"], "session_id": f"s{i}"})
            _, exposition = _get(f"{service}/metrics")

            def evaluated() -> bool:
                status, body = _get(f"{prometheus}/api/v1/rules")
                groups = json.loads(body)["data"]["groups"] if status == 200 else []
                found = [r for g in groups for r in g["rules"]]
                return len(found) == len(rules) and all(
                    r.get("lastEvaluation", "").startswith("20") and r["health"] != "unknown"
                    for r in found
                )

            time.sleep(3)  # a few scrapes and evaluations with the requests above
            _wait_until(evaluated, "every rule evaluated", process, 30)
            _, body = _get(f"{prometheus}/api/v1/rules")
            found = [r for g in json.loads(body)["data"]["groups"] for r in g["rules"]]
            configured = _query(prometheus, "arm:dialogue_arm_weight:share")["result"]
    failing = {r["name"]: r.get("lastError") for r in found if r["health"] != "ok"}
    assert not failing, failing
    # the recording rule reads the weights the service exports, normalized to 1
    weights = {
        m.group(1): float(m.group(2))
        for m in re.finditer(
            r'^dialogue_arm_weight\{[^}]*arm="([^"]+)"[^}]*\} (\S+)$', exposition.decode(), re.M
        )
    }
    assert weights, "the service exports no dialogue_arm_weight"
    shares = {r["metric"]["arm"]: float(r["value"][1]) for r in configured}
    total = sum(weights.values())
    assert shares == pytest.approx({arm: w / total for arm, w in weights.items()})
