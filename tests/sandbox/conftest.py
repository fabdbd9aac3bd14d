"""The real Ganeti 3.0 sandbox cluster (scripts/ganeti-sandbox.sh), started once per session.

``ganeti_sandbox`` is the script's ``env`` output (GANETI_SANDBOX_HOST, _PORT, _USER,
_PASSWORD_FILE, _CA_FILE, _CLUSTER, _NODE, ...); ``sandbox_rapi`` a RapiClient on it, for
checking what the cluster really holds and for cleaning up.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dispatcher.rapi import RapiClient
from tests.support import ROOT

SCRIPT = ROOT / "scripts" / "ganeti-sandbox.sh"


def _run(*args: str, timeout: float) -> str:
    done = subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"scripts/ganeti-sandbox.sh {' '.join(args)} exited {done.returncode}: "
            f"{done.stderr.strip()[-2000:]}"
        )
    return done.stdout


@pytest.fixture(scope="session")
def ganeti_sandbox() -> dict[str, str]:
    if not SCRIPT.exists():
        pytest.skip("scripts/ganeti-sandbox.sh is not in this checkout")
    _run("start", timeout=900)  # idempotent: a no-op when the cluster is up
    env: dict[str, str] = {}
    for line in _run("env", timeout=60).splitlines():
        line = line.removeprefix("export ").strip()
        if "=" in line:
            key, value = line.split("=", 1)
            env[key] = value.strip("'\"")
    return env


def sandbox_client(env: dict[str, str]) -> RapiClient:
    return RapiClient(
        env["GANETI_SANDBOX_HOST"],
        int(env["GANETI_SANDBOX_PORT"]),
        env["GANETI_SANDBOX_USER"],
        Path(env["GANETI_SANDBOX_PASSWORD_FILE"]).read_text().strip(),
        ca_pem=Path(env["GANETI_SANDBOX_CA_FILE"]).read_text(),
        timeout=60,
    )


@pytest.fixture
async def sandbox_rapi(ganeti_sandbox: dict[str, str]) -> AsyncIterator[RapiClient]:
    async with sandbox_client(ganeti_sandbox) as client:
        yield client
