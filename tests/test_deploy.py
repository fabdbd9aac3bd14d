"""deploy/systemd: the unit files pass ``systemd-analyze verify`` and say what we rely on.

``systemd-analyze verify`` checks that ExecStart= binaries exist. The units name the
installed location ``/opt/ganeti-dispatcher/bin/dispatcher``, which a development machine
does not have, so each unit is copied to a temporary directory with exactly that path
replaced by this virtualenv's ``dispatcher`` console script (a real executable of the same
program); nothing else in the unit changes. Any warning or error that mentions a unit fails
the test (``verify`` exits 0 after most warnings, so its output is what counts).

If ``systemd-analyze`` is missing, the fixture installs Debian's ``systemd`` package with
apt-get (it needs root; without it the test fails with instructions rather than skipping).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dispatcher.eventd.config import EventdSettings
from dispatcher.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SYSTEMD_DIR = ROOT / "deploy" / "systemd"
UNITS = sorted(SYSTEMD_DIR.glob("*.service"))
INSTALLED_BIN = "/opt/ganeti-dispatcher/bin/dispatcher"
VENV_BIN = Path(sys.executable).parent / "dispatcher"


def _ensure_systemd_tools() -> str:
    found = shutil.which("systemd-analyze")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.fail(
            "systemd-analyze is missing: install Debian's 'systemd' package "
            "(apt-get install --no-install-recommends systemd) and rerun"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "systemd"]
    if subprocess.run(cmd, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True, capture_output=True)
        subprocess.run(cmd, env=env, check=True, capture_output=True)
    found = shutil.which("systemd-analyze")
    assert found, "installed systemd but systemd-analyze is still not on PATH"
    return found


@pytest.fixture(scope="session")
def systemd_analyze() -> str:
    return _ensure_systemd_tools()


def _units_with_local_binary(tmp_path: Path) -> list[Path]:
    assert VENV_BIN.is_file() and os.access(VENV_BIN, os.X_OK), (
        f"{VENV_BIN} missing: install the project into the venv (pip install -e .)"
    )
    out = []
    for unit in UNITS:
        text = unit.read_text()
        assert INSTALLED_BIN in text, f"{unit.name} does not run {INSTALLED_BIN}"
        copy = tmp_path / unit.name
        copy.write_text(text.replace(INSTALLED_BIN, str(VENV_BIN)))
        out.append(copy)
    return out


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections → ordered (key, value) pairs; keys may repeat, as systemd allows."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"{path.name}: {line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def one(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"[{section}] {key}= expected once, found {found}"
    return found[0]


def seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min|m)?", value)
    assert m, f"unexpected time span {value!r}"
    return float(m.group(1)) * (60 if m.group(2) in ("min", "m") else 1)


def test_units_exist() -> None:
    assert {u.name for u in UNITS} == {
        "ganeti-dispatcher.service",
        "ganeti-dispatcher-eventd.service",
    }


def test_systemd_analyze_verify(systemd_analyze: str, tmp_path: Path) -> None:
    copies = _units_with_local_binary(tmp_path)
    proc = subprocess.run(
        [systemd_analyze, "verify", "--man=no", *map(str, copies)],
        capture_output=True,
        text=True,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""},
        check=False,
        timeout=120,
    )
    output = (proc.stdout + proc.stderr).splitlines()
    names = [u.name for u in UNITS] + [str(tmp_path)]
    about_units = [line for line in output if any(n in line for n in names)]
    assert proc.returncode == 0, "\n".join(output)
    assert about_units == [], "\n".join(about_units)


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_security_exposure_is_low(systemd_analyze: str, tmp_path: Path, unit: Path) -> None:
    copy = next(c for c in _units_with_local_binary(tmp_path) if c.name == unit.name)
    proc = subprocess.run(
        [
            systemd_analyze,
            "security",
            "--offline=yes",
            "--threshold=20",  # exposure ≤ 2.0 ("OK") on systemd's 0-10 scale
            "--no-pager",
            str(copy),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_common_service_settings(unit: Path) -> None:
    u = parse_unit(unit)
    assert one(u, "Service", "Type") == "notify"
    assert one(u, "Service", "NotifyAccess") == "main"
    assert seconds(one(u, "Service", "WatchdogSec")) == 30
    assert one(u, "Service", "Restart") == "on-failure"
    assert one(u, "Service", "User") == "ganeti-dispatcher"
    # The drain after SIGTERM must fit before systemd sends SIGKILL.
    grace = Settings.model_fields["shutdown_grace"].default
    assert seconds(one(u, "Service", "TimeoutStopSec")) >= grace + 15
    assert "-/etc/ganeti-dispatcher/env" in values(u, "Service", "EnvironmentFile")
    families = one(u, "Service", "RestrictAddressFamilies").split()
    assert "AF_UNIX" in families  # sd_notify needs it
    assert one(u, "Service", "CapabilityBoundingSet") == ""
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices"):
        assert one(u, "Service", key) == "yes", key
    assert one(u, "Service", "ProtectSystem") == "strict"
    assert "@system-service" in values(u, "Service", "SystemCallFilter")
    assert one(u, "Unit", "StartLimitBurst")
    # No secret in the unit: credentials only.
    env_lines = " ".join(values(u, "Service", "Environment"))
    assert "PASSWORD" not in env_lines.upper()
    for cred in values(u, "Service", "LoadCredential"):
        name, _, source = cred.partition(":")
        assert name in ("database-password", "amqp-password")
        assert source == f"/etc/ganeti-dispatcher/{name}"


def test_dispatcher_unit() -> None:
    u = parse_unit(SYSTEMD_DIR / "ganeti-dispatcher.service")
    assert one(u, "Service", "ExecStartPre") == f"{INSTALLED_BIN} migrate"
    assert one(u, "Service", "ExecStart") == f"{INSTALLED_BIN} run"
    after = one(u, "Unit", "After").split()
    for dep in ("network-online.target", "rabbitmq-server.service", "postgresql.service"):
        assert dep in after
    assert "network-online.target" in one(u, "Unit", "Wants").split()
    creds = {c.partition(":")[0] for c in values(u, "Service", "LoadCredential")}
    assert creds == {"database-password", "amqp-password"}


def test_eventd_unit() -> None:
    u = parse_unit(SYSTEMD_DIR / "ganeti-dispatcher-eventd.service")
    assert one(u, "Service", "ExecStart") == f"{INSTALLED_BIN} eventd"
    assert values(u, "Service", "ExecStartPre") == []  # no database on the Ganeti master
    assert "ganeti.target" in one(u, "Unit", "After").split()
    assert one(u, "Service", "SupplementaryGroups") == "gnt-daemons"
    queue_dir = str(Settings.model_fields["ganeti_queue_dir"].default)
    assert queue_dir in one(u, "Service", "ReadOnlyPaths").split()
    creds = {c.partition(":")[0] for c in values(u, "Service", "LoadCredential")}
    assert creds == {"amqp-password"}


def test_env_example_names_are_settings() -> None:
    known = {f"DISPATCHER_{name.upper()}" for name in Settings.model_fields}
    names = re.findall(
        r"^#?\s*(DISPATCHER_[A-Z0-9_]+)=", (SYSTEMD_DIR / "env.example").read_text(), re.M
    )
    assert names, "env.example lists no settings"
    assert set(names) <= known, set(names) - known
    # No password settings in the environment file: they come as credentials.
    assert not [n for n in names if "PASSWORD" in n]


def test_eventd_env_example_names_are_eventd_settings() -> None:
    known = {f"DISPATCHER_EVENTD_{name.upper()}" for name in EventdSettings.model_fields}
    known |= {f"DISPATCHER_{name.upper()}" for name in Settings.model_fields}
    text = (SYSTEMD_DIR / "eventd.env.example").read_text()
    names = re.findall(r"^#?\s*(DISPATCHER_[A-Z0-9_]+)=", text, re.M)
    assert set(names) <= known, set(names) - known
    # every eventd setting an operator may set is listed (passwords come as credentials)
    wanted = {
        f"DISPATCHER_EVENTD_{name.upper()}"
        for name in EventdSettings.model_fields
        if "password" not in name
    }
    assert wanted <= set(names), wanted - set(names)
    assert not [n for n in names if "PASSWORD" in n]
    unit = (SYSTEMD_DIR / "ganeti-dispatcher-eventd.service").read_text()
    assert "EnvironmentFile=-/etc/ganeti-dispatcher/eventd.env" in unit


def test_sysusers_creates_the_service_user(systemd_analyze: str, tmp_path: Path) -> None:
    sysusers = shutil.which("systemd-sysusers")
    assert sysusers, "systemd-sysusers missing (Debian package systemd)"
    conf_dir = tmp_path / "etc" / "sysusers.d"
    conf_dir.mkdir(parents=True)
    shutil.copy(SYSTEMD_DIR / "sysusers.d" / "ganeti-dispatcher.conf", conf_dir)
    proc = subprocess.run(
        [sysusers, f"--root={tmp_path}"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text().splitlines()
    group = (tmp_path / "etc" / "group").read_text().splitlines()
    [entry] = [line.split(":") for line in passwd if line.startswith("ganeti-dispatcher:")]
    assert entry[6] == "/usr/sbin/nologin"
    assert any(line.startswith("ganeti-dispatcher:") for line in group)
    assert "Failed" not in proc.stderr and "ignoring" not in proc.stderr, proc.stderr
