"""dispatcher.runtime.health: the /livez /readyz /metrics listener and the healthcheck command."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from dispatcher.metrics import MESSAGES
from dispatcher.runtime.health import (
    HealthServer,
    check_health,
    check_health_sync,
    healthcheck_main,
    parse_listen,
    probe_url,
)
from tests.support import until_true


class Checks:
    """A readiness callable whose answer the test flips."""

    def __init__(self) -> None:
        self.state: dict[str, bool] = {"amqp": True, "database": True}
        self.calls = 0
        self.delay = 0.0
        self.error: Exception | None = None

    async def __call__(self) -> Mapping[str, bool]:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error:
            raise self.error
        return dict(self.state)


@pytest.fixture
async def checks() -> Checks:
    return Checks()


@pytest.fixture
async def server(checks: Checks) -> AsyncIterator[HealthServer]:
    async with HealthServer("127.0.0.1:0", checks, cache_seconds=0, readiness_timeout=0.2) as srv:
        yield srv


@pytest.fixture
async def client(server: HealthServer) -> AsyncIterator[httpx.AsyncClient]:
    # trust_env=False: no proxy from the environment for a loopback test.
    async with httpx.AsyncClient(base_url=str(server.url), trust_env=False, timeout=5) as c:
        yield c


async def test_binds_port_zero(server: HealthServer) -> None:
    assert server.port and server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}"


@pytest.mark.parametrize("path", ["/livez", "/healthz", "/livez?verbose=1"])
async def test_livez(client: httpx.AsyncClient, checks: Checks, path: str) -> None:
    checks.state["amqp"] = False  # liveness never depends on the broker
    r = await client.get(path)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"status": "ok"}
    assert checks.calls == 0


async def test_readyz_follows_the_checks(client: httpx.AsyncClient, checks: Checks) -> None:
    r = await client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "checks": {"amqp": True, "database": True}}

    checks.state["database"] = False
    r = await client.get("/readyz")
    assert r.status_code == 503
    assert r.json() == {"status": "unavailable", "checks": {"amqp": True, "database": False}}

    checks.state["database"] = True
    assert (await client.get("/readyz")).status_code == 200


async def test_readyz_error_and_timeout(client: httpx.AsyncClient, checks: Checks) -> None:
    checks.error = ConnectionRefusedError("postgresql://u:pw@db refused")
    r = await client.get("/readyz")
    assert r.status_code == 503
    assert r.json() == {"status": "unavailable", "checks": {}, "error": "ConnectionRefusedError"}
    assert "pw" not in r.text

    checks.error = None
    checks.delay = 1.0  # readiness_timeout is 0.2 s
    r = await client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["error"] == "timeout"


async def test_readyz_is_cached(checks: Checks) -> None:
    async with (
        HealthServer("127.0.0.1:0", checks, cache_seconds=30) as srv,
        httpx.AsyncClient(base_url=str(srv.url), trust_env=False) as c,
    ):
        assert (await c.get("/readyz")).status_code == 200
        checks.state["amqp"] = False
        results = await asyncio.gather(*(c.get("/readyz") for _ in range(5)))
        assert {r.status_code for r in results} == {200}  # still the cached answer
        assert checks.calls == 1


async def test_metrics(client: httpx.AsyncClient) -> None:
    MESSAGES.labels(queue="snf-events-op", outcome="applied").inc()
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "dispatcher_messages_total{" in r.text
    line = next(
        ln
        for ln in r.text.splitlines()
        if ln.startswith("dispatcher_messages_total{")
        and 'queue="snf-events-op"' in ln
        and 'outcome="applied"' in ln
    )
    assert float(line.rsplit(" ", 1)[1]) >= 1


async def test_metrics_openmetrics_when_asked(client: httpx.AsyncClient) -> None:
    r = await client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.rstrip().endswith("# EOF")


async def test_custom_registry(checks: Checks) -> None:
    registry = CollectorRegistry()
    Counter("only_here", "test counter", registry=registry).inc()
    async with (
        HealthServer("127.0.0.1:0", checks, registry) as srv,
        httpx.AsyncClient(base_url=str(srv.url), trust_env=False) as c,
    ):
        text = (await c.get("/metrics")).text
    assert "only_here_total 1.0" in text
    assert "dispatcher_messages" not in text


async def test_not_found_and_method_not_allowed(client: httpx.AsyncClient) -> None:
    r = await client.get("/nope")
    assert r.status_code == 404
    assert r.json() == {"error": "not found"}
    r = await client.post("/livez")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, HEAD"


async def test_head(client: httpx.AsyncClient) -> None:
    r = await client.head("/livez")
    assert r.status_code == 200
    assert r.content == b""
    assert int(r.headers["content-length"]) > 0


async def test_garbage_request(server: HealthServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"hello there\r\n\r\n")
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert response.startswith(b"HTTP/1.1 400 ")


async def test_oversized_request_head(server: HealthServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /livez HTTP/1.1\r\nX-Pad: " + b"a" * 40000 + b"\r\n\r\n")
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert response.startswith(b"HTTP/1.1 431 ")


async def test_close_does_not_wait_for_idle_clients(checks: Checks) -> None:
    srv = HealthServer("127.0.0.1:0", checks, request_timeout=60)
    await srv.start()
    _reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(b"GET /livez HTTP/1.1\r\n")  # never finishes its request
    await writer.drain()
    await until_true(lambda: srv.connections == 1, 10, what="the connection being served")
    await asyncio.wait_for(srv.close(), 2)
    assert srv.connections == 0
    writer.close()
    with pytest.raises(RuntimeError):
        await srv.start()


async def test_disabled_listener(checks: Checks) -> None:
    async with HealthServer("", checks) as srv:
        assert not srv.enabled
        assert srv.port is None and srv.url is None


async def test_double_start_is_an_error(server: HealthServer) -> None:
    with pytest.raises(RuntimeError, match="running"):
        await server.start()


async def test_healthcheck_main(server: HealthServer, checks: Checks) -> None:
    listen = f"127.0.0.1:{server.port}"
    # healthcheck_main blocks (urllib): run it off the loop that serves the request.
    assert await asyncio.to_thread(healthcheck_main, listen) == 0
    checks.state["amqp"] = False
    assert await asyncio.to_thread(healthcheck_main, listen) == 1
    assert await check_health(f"{server.url}/livez") is True
    assert await check_health(f"{server.url}/readyz") is False


async def test_healthcheck_main_failures(capsys: pytest.CaptureFixture[str]) -> None:
    # A port nothing listens on: bind one, note it, close it.
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    assert await asyncio.to_thread(healthcheck_main, f"127.0.0.1:{port}", 2.0) == 1
    assert "not ready" in capsys.readouterr().err
    assert healthcheck_main("") == 1
    assert "disabled" in capsys.readouterr().err
    assert healthcheck_main("nonsense") == 1
    assert "bad listen address" in capsys.readouterr().err
    assert check_health_sync(f"http://127.0.0.1:{port}/readyz", 2.0) is False


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("", None),
        ("   ", None),
        ("127.0.0.1:9187", ("127.0.0.1", 9187)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("localhost:80", ("localhost", 80)),
        ("[::1]:9187", ("::1", 9187)),
        ("[::]:0", ("::", 0)),
    ],
)
def test_parse_listen(listen: str, expected: tuple[str, int] | None) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize(
    "listen", ["9187", "::1:9187", "[::1]9187", "[::1", "host:", "host:http", ":9187", "h:70000"]
)
def test_parse_listen_rejects(listen: str) -> None:
    with pytest.raises(ValueError, match="bad listen address"):
        parse_listen(listen)


def test_probe_url() -> None:
    assert probe_url("127.0.0.1:9187") == "http://127.0.0.1:9187/readyz"
    assert probe_url("0.0.0.0:9187") == "http://127.0.0.1:9187/readyz"
    assert probe_url("[::]:9187", "/livez") == "http://[::1]:9187/livez"
    assert probe_url("[fe80::1]:1") == "http://[fe80::1]:1/readyz"
    assert probe_url("") is None


async def test_healthcheck_ignores_proxy_settings(
    server: HealthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Containers often carry HTTP(S)_PROXY; the probe of our own loopback must not use it.
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9/")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert await asyncio.to_thread(healthcheck_main, f"127.0.0.1:{server.port}") == 0
