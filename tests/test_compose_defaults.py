"""Deployment defaults (issue 12, item 10): nothing published beyond this host unless an operator
says so, and no Grafana admin/admin: its password comes from .env (documented in .env.example)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR:-default} and ${VAR:?error} for one value; raises on a :? without VAR."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        value = env.get(name, "")
        if op == ":?" and not value:
            raise ValueError(f"{name}: {arg}")
        return value or (arg if op == ":-" else "")

    return re.sub(r"\$\{(\w+)(:-|:\?)?([^}]*)\}", one, text)


def test_every_published_port_binds_to_localhost_by_default(compose: dict[str, Any]) -> None:
    published = {
        name: service["ports"]
        for name, service in compose["services"].items()
        if "ports" in service
    }
    assert set(published) == {"api", "api-gpu", "prometheus", "grafana"}
    for name, ports in published.items():
        for port in ports:
            assert _interpolate(port, {}).startswith("127.0.0.1:"), (name, port)
            opened = _interpolate(port, {"DIALOGUE_BIND_ADDRESS": "0.0.0.0"})
            assert opened.startswith("0.0.0.0:"), (name, port)


def test_grafana_needs_a_password_from_the_env_file(compose: dict[str, Any]) -> None:
    env = compose["services"]["grafana"]["environment"]
    password = env["GF_SECURITY_ADMIN_PASSWORD"]
    with pytest.raises(ValueError, match=r"set GRAFANA_ADMIN_PASSWORD in \.env"):
        _interpolate(password, {})
    assert _interpolate(password, {"GRAFANA_ADMIN_PASSWORD": "s3cret"}) == "s3cret"
    assert "admin" not in password.lower().replace("grafana_admin_password", "")


def test_env_example_documents_every_compose_variable(compose: dict[str, Any]) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    used = set(re.findall(r"\$\{(\w+)", text))
    example = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^(\w+)=", example, flags=re.MULTILINE))
    wanted = {v for v in used if v.startswith(("GRAFANA_", "PROMETHEUS_"))} | {
        "DIALOGUE_BIND_ADDRESS",
        "DIALOGUE_API_PORTS",
        "DIALOGUE_API_GPU_PORTS",
    }
    assert wanted <= documented, wanted - documented
    assert re.search(r"^GRAFANA_ADMIN_PASSWORD=$", example, flags=re.MULTILINE)  # no default
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert ".env" in ignored  # the filled-in copy is never committed
