"""The internal HTTP listener: ``/livez`` (``/healthz``), ``/readyz`` and ``/metrics``.

A deliberately tiny HTTP/1.1 server on :func:`asyncio.start_server` (one request per
connection, ``GET``/``HEAD`` only), so it needs no web framework and shares the daemon's loop:

- ``/livez`` answers 200 whenever the event loop runs. It never looks at RabbitMQ or
  PostgreSQL, or a broker outage would turn into a restart storm.
- ``/readyz`` awaits the ``readiness`` callable (bounded by a timeout, result cached about a
  second) and answers 200 if every check is true, else 503; the JSON body lists the checks.
- ``/metrics`` serves the Prometheus registry (text format, or OpenMetrics if asked for).

:func:`healthcheck_main` is the ``dispatcher healthcheck`` command (Docker ``HEALTHCHECK``):
it queries ``/readyz`` with the standard library only.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from prometheus_client.exposition import choose_encoder

from dispatcher.metrics import REGISTRY

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

__all__ = [
    "HealthServer",
    "Readiness",
    "check_health",
    "check_health_sync",
    "healthcheck_main",
    "parse_listen",
    "probe_url",
]

log = logging.getLogger(__name__)

Readiness = Callable[[], Awaitable[Mapping[str, bool]]]

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}
_JSON = "application/json"
_MAX_HEAD = 16 * 1024


def parse_listen(listen: str) -> tuple[str, int] | None:
    """``"host:port"`` or ``"[v6addr]:port"`` → ``(host, port)``; ``""`` → None (disabled).

    Port 0 asks the kernel for a free port. Raises ValueError for anything else.
    """
    text = listen.strip()
    if not text:
        return None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"bad listen address {listen!r}: expected [ADDRESS]:PORT")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"bad listen address {listen!r}: expected HOST:PORT")
        if ":" in host:
            raise ValueError(f"bad listen address {listen!r}: write IPv6 as [ADDRESS]:PORT")
    if not host:
        raise ValueError(f"bad listen address {listen!r}: the host is missing (e.g. 0.0.0.0)")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"bad listen address {listen!r}: port must be 0-65535")
    return host, int(port_text)


def _client_host(host: str) -> str:
    """Where a local client reaches a server bound to ``host`` (wildcards → loopback)."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def probe_url(listen: str, path: str = "/readyz") -> str | None:
    """The URL a local client uses for ``path`` on the listener ``listen`` (None: disabled)."""
    addr = parse_listen(listen)
    if addr is None:
        return None
    host = _client_host(addr[0])
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{addr[1]}{path}"


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


class HealthServer:
    """The listener, as an async context manager. Construction only parses ``listen``.

    ``listen == ""`` disables it: entering the context does nothing and :attr:`port` stays
    None. With port 0, :attr:`port` holds the bound port once started.

    ``readiness`` should bound its own checks below ``readiness_timeout`` (3 s), so that a
    slow dependency shows up as that check being false rather than as a timeout.
    """

    def __init__(
        self,
        listen: str,
        readiness: Readiness,
        registry: CollectorRegistry = REGISTRY,
        *,
        readiness_timeout: float = 3.0,
        cache_seconds: float = 1.0,
        request_timeout: float = 5.0,
    ) -> None:
        addr = parse_listen(listen)
        self.listen = listen
        self.host: str | None = addr[0] if addr else None
        self.port: int | None = addr[1] if addr else None
        self.readiness = readiness
        self.registry = registry
        self.readiness_timeout = readiness_timeout
        self.cache_seconds = cache_seconds
        self.request_timeout = request_timeout
        self._server: asyncio.Server | None = None
        self._state = _State.NEW
        self._clients: set[asyncio.Task[None]] = set()
        self._cache: tuple[float, int, dict[str, object]] | None = None
        self._lock = asyncio.Lock()

    @property
    def connections(self) -> int:
        """Client connections being served now (an idle or slow client counts)."""
        return len(self._clients)

    @property
    def enabled(self) -> bool:
        return self.host is not None

    @property
    def url(self) -> str | None:
        """Base URL of the running listener (for tests and logs)."""
        if self.host is None or self.port is None:
            return None
        host = _client_host(self.host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        if self._state is not _State.NEW:
            raise RuntimeError(f"HealthServer cannot start: it is {self._state.value}")
        self._state = _State.RUNNING
        if self.host is None:
            log.info("health/metrics listener disabled")
            return
        self._server = await asyncio.start_server(
            self._on_connection, self.host, self.port, limit=_MAX_HEAD, reuse_address=True
        )
        sockets = self._server.sockets
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        log.info("health/metrics listener on %s", self.url)

    async def close(self) -> None:
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        if self._server is not None:
            self._server.close()
            for task in list(self._clients):
                task.cancel()
            if self._clients:
                await asyncio.wait(list(self._clients))
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> HealthServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ readiness

    async def check_readiness(self) -> tuple[int, dict[str, object]]:
        """``(status code, JSON body)`` for ``/readyz``; cached for :attr:`cache_seconds`."""
        cached = self._cache
        if cached is not None and time.monotonic() - cached[0] < self.cache_seconds:
            return cached[1], cached[2]
        async with self._lock:
            cached = self._cache
            if cached is not None and time.monotonic() - cached[0] < self.cache_seconds:
                return cached[1], cached[2]
            code, body = await self._evaluate()
            self._cache = (time.monotonic(), code, body)
            return code, body

    async def _evaluate(self) -> tuple[int, dict[str, object]]:
        try:
            result = await asyncio.wait_for(self.readiness(), self.readiness_timeout)
            checks = {str(name): bool(ok) for name, ok in result.items()}
        except TimeoutError:
            log.warning("readiness check timed out after %.1fs", self.readiness_timeout)
            return 503, {"status": "unavailable", "checks": {}, "error": "timeout"}
        except Exception as exc:
            log.warning("readiness check failed: %s", exc, exc_info=True)
            return 503, {"status": "unavailable", "checks": {}, "error": type(exc).__name__}
        ready = all(checks.values())
        return (200 if ready else 503), {
            "status": "ok" if ready else "unavailable",
            "checks": checks,
        }

    # ------------------------------------------------------------------ HTTP

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            await self._serve_one(reader, writer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("health listener: error while answering a request")
        finally:
            if task is not None:
                self._clients.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.request_timeout)
        except asyncio.LimitOverrunError:
            await self._respond(writer, "GET", 431, {"error": "request head too large"})
            await self._discard_input(reader)
            return
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await self._respond(writer, "GET", 400, {"error": "bad request line"})
            return
        method, target, _version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        path = urlsplit(target).path
        log.debug("health listener: %s %s", method, path)

        if path not in ("/livez", "/healthz", "/readyz", "/metrics"):
            await self._respond(writer, method, 404, {"error": "not found"})
            return
        if method not in ("GET", "HEAD"):
            await self._respond(
                writer, method, 405, {"error": "method not allowed"}, allow="GET, HEAD"
            )
            return
        if path in ("/livez", "/healthz"):
            await self._respond(writer, method, 200, {"status": "ok"})
        elif path == "/readyz":
            code, body = await self.check_readiness()
            await self._respond(writer, method, code, body)
        else:
            encoder, content_type = choose_encoder(headers.get("accept", ""))
            payload = encoder(self.registry)
            await self._write(writer, method, 200, payload, content_type)

    @staticmethod
    async def _discard_input(reader: asyncio.StreamReader, limit: int = 1 << 20) -> None:
        """Read what the client still sends (briefly), so closing does not reset the
        connection before the client has read our error response."""
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(1):
                while limit > 0 and (chunk := await reader.read(min(limit, 65536))):
                    limit -= len(chunk)

    async def _respond(
        self,
        writer: asyncio.StreamWriter,
        method: str,
        code: int,
        body: Mapping[str, object],
        allow: str | None = None,
    ) -> None:
        payload = (json.dumps(body, separators=(",", ":")) + "\n").encode()
        await self._write(writer, method, code, payload, _JSON, allow)

    @staticmethod
    async def _write(
        writer: asyncio.StreamWriter,
        method: str,
        code: int,
        payload: bytes,
        content_type: str,
        allow: str | None = None,
    ) -> None:
        head = [
            f"HTTP/1.1 {code} {_REASONS.get(code, 'Unknown')}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(payload)}",
            "Cache-Control: no-store",
            "Connection: close",
        ]
        if allow:
            head.append(f"Allow: {allow}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        if method != "HEAD":
            writer.write(payload)
        await writer.drain()


# ---------------------------------------------------------------------- client side


def _probe(url: str, timeout: float) -> tuple[bool, str]:
    """GET ``url`` without any proxy: ``(status is 200, one-line description)``."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            code = resp.status
            body = resp.read(4096)
    except urllib.error.HTTPError as exc:
        code = exc.code
        body = exc.read(4096)
        exc.close()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"{url}: {reason}"
    text = body.decode("utf-8", "replace").strip().replace("\n", " ")
    return code == 200, f"{url}: HTTP {code} {text}"


def check_health_sync(url: str, timeout: float = 5.0) -> bool:
    """True if ``GET url`` answers 200 within ``timeout`` seconds (standard library only)."""
    return _probe(url, timeout)[0]


async def check_health(url: str, probe_timeout: float = 5.0) -> bool:
    """:func:`check_health_sync` without blocking the event loop."""
    return await asyncio.to_thread(check_health_sync, url, probe_timeout)


def healthcheck_main(listen: str, timeout: float = 5.0) -> int:
    """``dispatcher healthcheck``: 0 if ``/readyz`` on ``listen`` answers 200, else 1.

    Exit status 1 covers every failure (including a bad or empty ``listen``): Docker's
    ``HEALTHCHECK`` treats 1 as unhealthy and reserves 2. Reasons go to stderr, one line.
    """
    try:
        url = probe_url(listen)
    except ValueError as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 1
    if url is None:
        print(
            "healthcheck: the health listener is disabled (DISPATCHER_HTTP_LISTEN is empty)",
            file=sys.stderr,
        )
        return 1
    ok, detail = _probe(url, timeout)
    if not ok:
        print(f"healthcheck: not ready: {detail}", file=sys.stderr)
        return 1
    return 0
