"""RapiClient against the real Ganeti 3.0 sandbox (scripts/ganeti-sandbox.sh).

Proves wait_for_job on the genuine job queue: a job that succeeds, one that fails, one that is
canceled, and a job id the cluster never issued.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator

import pytest

from dispatcher.rapi import RapiClient, RapiNotFound, RapiUnauthorized
from tests.support import sandbox_client, sandbox_env

pytestmark = pytest.mark.sandbox

NODE = "node1.gnt.test"
JOB_BUDGET = 120.0  # seconds; queue latency is normally 1-2 s, allow for slow machines


@pytest.fixture(scope="module")
def sandbox() -> dict[str, str]:
    return sandbox_env()


def _client(env: dict[str, str], password: str | None = None) -> RapiClient:
    return sandbox_client(env, password, timeout=30)


@pytest.fixture
async def rapi(sandbox: dict[str, str]) -> AsyncIterator[RapiClient]:
    async with _client(sandbox) as client:
        yield client


def _submit_delay(seconds: int) -> int:
    """A ``gnt-debug delay`` job holding the node lock for ``seconds``; returns its id."""
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2 to enter the sandbox namespace")
    done = subprocess.run(
        ["ip", "netns", "exec", "gnt", "gnt-debug", "delay", "--submit", "-n", NODE, str(seconds)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = done.stdout + done.stderr  # gnt-debug prints "JobID: N" on stderr
    match = re.search(r"JobID:\s*(\d+)", out)
    assert match, f"no job id in {out!r}"
    return int(match.group(1))


async def test_release_is_detected(rapi: RapiClient) -> None:
    assert (await rapi.get_software_version())[:1] == (3,)


async def test_wait_for_job_success(rapi: RapiClient) -> None:
    name = f"rapi-test-{secrets.token_hex(3)}"
    created = await rapi.create_network(name, "10.77.250.0/24", tags=["rapi-test"])
    status = await rapi.wait_for_job(created, timeout=JOB_BUDGET)
    assert status["status"] == "success"
    assert status["opstatus"] == ["success"]
    assert (await rapi.get_network(name))["network"] == "10.77.250.0/24"

    deleted = await rapi.delete_network(name, depends=[(created, ["success"])])
    assert (await rapi.wait_for_job(deleted, timeout=JOB_BUDGET))["status"] == "success"
    with pytest.raises(RapiNotFound):
        await rapi.get_network(name)


async def test_wait_for_job_error(rapi: RapiClient) -> None:
    body = {
        "mode": "create",
        "name": f"rapi-fail-{secrets.token_hex(3)}.gnt.test",
        "disk_template": "file",
        "disks": [{"size": 64}],  # below the ipolicy minimum of 1024 MiB
        "nics": [{}],
        "os_type": "snf-image+default",
        "pnode": NODE,
        "ip_check": False,
        "name_check": False,
        "start": False,
    }
    job = await rapi.create_instance(body)
    status = await rapi.wait_for_job(job, timeout=JOB_BUDGET)
    assert status["status"] == "error"
    error_class, (message, *_) = status["opresult"][0]
    assert error_class == "OpPrereqError"
    assert "violates policy" in message


async def test_wait_for_job_canceled(rapi: RapiClient) -> None:
    holder = _submit_delay(8)
    blocked = _submit_delay(1)  # waits for the node lock the first one holds
    canceled, message = await rapi.cancel_job(blocked)
    assert canceled, message
    status = await rapi.wait_for_job(blocked, timeout=JOB_BUDGET)
    assert status["status"] == "canceled"
    assert (await rapi.wait_for_job(holder, timeout=JOB_BUDGET))["status"] == "success"


async def test_wait_for_unknown_job(rapi: RapiClient) -> None:
    with pytest.raises(RapiNotFound):
        await rapi.wait_for_job(987654321, timeout=JOB_BUDGET)
    with pytest.raises(RapiNotFound):
        await rapi.get_job_status(987654321)


async def test_wrong_password(sandbox: dict[str, str]) -> None:
    async with _client(sandbox, password="wrong") as client:
        with pytest.raises(RapiUnauthorized):
            await client.get_info()
