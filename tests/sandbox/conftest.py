"""The real Ganeti 3.0 sandbox cluster (scripts/ganeti-sandbox.sh), started once per session.

``ganeti_sandbox`` is the script's ``env`` output (GANETI_SANDBOX_HOST, _PORT, _USER,
_PASSWORD_FILE, _CA_FILE, _CLUSTER, _NODE, ...); ``sandbox_rapi`` a RapiClient on it, for
checking what the cluster really holds and for cleaning up.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from dispatcher.rapi import RapiClient
from tests.support import sandbox_client, sandbox_env


@pytest.fixture(scope="session")
def ganeti_sandbox() -> dict[str, str]:
    return sandbox_env()


@pytest.fixture
async def sandbox_rapi(ganeti_sandbox: dict[str, str]) -> AsyncIterator[RapiClient]:
    async with sandbox_client(ganeti_sandbox) as client:
        yield client
