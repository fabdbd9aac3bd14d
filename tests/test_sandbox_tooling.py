"""The Ganeti sandbox that scripts/test.sh starts is a real cluster: its genuine RAPI answers
over TLS with authentication, and it offers the sandbox OS snf-image+default."""

from __future__ import annotations

import os
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.sandbox

ENV_VARS = (
    "GANETI_SANDBOX_HOST",
    "GANETI_SANDBOX_PORT",
    "GANETI_SANDBOX_USER",
    "GANETI_SANDBOX_PASSWORD_FILE",
    "GANETI_SANDBOX_CA_FILE",
    "GANETI_SANDBOX_CLUSTER",
    "GANETI_SANDBOX_NODE",
)


@pytest.fixture(scope="module")
def sandbox() -> dict[str, str]:
    missing = [name for name in ENV_VARS if not os.environ.get(name)]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not set: run the tests through scripts/test.sh, or "
            'eval "$(scripts/ganeti-sandbox.sh env)" after scripts/ganeti-sandbox.sh start',
            pytrace=False,
        )
    return {name: os.environ[name] for name in ENV_VARS}


def _base_url(env: dict[str, str]) -> str:
    return f"https://{env['GANETI_SANDBOX_HOST']}:{env['GANETI_SANDBOX_PORT']}"


def _client(env: dict[str, str], *, auth: bool) -> httpx.Client:
    tls = ssl.create_default_context(cafile=env["GANETI_SANDBOX_CA_FILE"])
    credentials = None
    if auth:
        password = Path(env["GANETI_SANDBOX_PASSWORD_FILE"]).read_text().strip()
        credentials = httpx.BasicAuth(env["GANETI_SANDBOX_USER"], password)
    return httpx.Client(base_url=_base_url(env), verify=tls, auth=credentials, timeout=30)


def test_info_is_ganeti_3_over_verified_tls(sandbox: dict[str, str]) -> None:
    with _client(sandbox, auth=True) as client:
        response = client.get("/2/info")
    assert response.status_code == 200, response.text
    info = response.json()
    assert info["software_version"].startswith("3."), info["software_version"]
    assert info["name"] == sandbox["GANETI_SANDBOX_CLUSTER"]
    assert info["master"] == sandbox["GANETI_SANDBOX_NODE"]
    assert info["enabled_hypervisors"] == ["fake"]


def test_unauthenticated_request_is_refused(sandbox: dict[str, str]) -> None:
    with _client(sandbox, auth=False) as client:
        response = client.get("/2/info")
    assert response.status_code == 401, response.text


def test_wrong_password_is_refused(sandbox: dict[str, str]) -> None:
    tls = ssl.create_default_context(cafile=sandbox["GANETI_SANDBOX_CA_FILE"])
    auth = httpx.BasicAuth(sandbox["GANETI_SANDBOX_USER"], "not-the-password")
    with httpx.Client(base_url=_base_url(sandbox), verify=tls, auth=auth, timeout=30) as client:
        response = client.get("/2/info")
    assert response.status_code == 401, response.text


def test_sandbox_os_is_offered(sandbox: dict[str, str]) -> None:
    with _client(sandbox, auth=True) as client:
        response = client.get("/2/os")
    assert response.status_code == 200, response.text
    assert "snf-image+default" in response.json()

    netns = os.environ.get("GANETI_SANDBOX_NETNS", "gnt")
    listed = subprocess.run(
        ["ip", "netns", "exec", netns, "gnt-os", "list", "--no-headers"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert "snf-image+default" in listed
