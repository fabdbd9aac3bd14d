"""The HTTP layer under :class:`~dispatcher.rapi.client.RapiClient`.

It owns TLS trust, timeouts, the retry policy, JSON decoding, metrics and the per-request log
line; it knows nothing about Ganeti resources. Every failure leaves it as a ``RapiError``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import httpx

from dispatcher import __version__
from dispatcher.metrics import RAPI_REQUESTS, RAPI_SECONDS
from dispatcher.rapi.errors import (
    RapiCertificateError,
    RapiError,
    RapiResponseError,
    error_from_response,
    rapi_errors,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
QueryValue = str | int | bool | None
Query = Sequence[tuple[str, QueryValue]]

# Ganeti serves at most ~20 clients and holds a slot per /wait long-poll; stay well below.
MAX_CONNECTIONS = 10
CONNECT_TIMEOUT = 10.0
_BODY_EXCERPT = 2048


class UnexpectedShape(ValueError):
    """Raised by a response parser; becomes :class:`RapiResponseError` with request context."""


class Secret:
    """Holds a password so that no repr, log record or traceback local shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__


def encode_query(query: Query) -> httpx.QueryParams:
    """Ganeti reads flags with ``int(value)``: only ``1``/``0`` work, never ``true``."""
    encoded: list[tuple[str, str]] = []
    for key, value in query:
        if value is None:
            continue
        if isinstance(value, bool):
            encoded.append((key, "1" if value else "0"))
        elif isinstance(value, int | str):
            encoded.append((key, str(value)))
        else:
            raise TypeError(f"query parameter {key!r}: unsupported type {type(value).__name__}")
    return httpx.QueryParams(tuple(encoded))


def build_ssl_context(ca_pem: str | None, insecure: bool) -> ssl.SSLContext | bool:
    """System CAs by default; a pinned certificate with no hostname check; or no checks at all.

    Ganeti's generated certificate names ``ganeti.example.com`` whatever the cluster is called,
    so with a pin the pin itself is the trust and the hostname cannot be.
    """
    if insecure:
        return False
    if ca_pem is None:
        return ssl.create_default_context()
    try:
        context = ssl.create_default_context(cadata=ca_pem)
    except (ssl.SSLError, ValueError) as exc:
        raise RapiCertificateError(f"the pinned CA certificate cannot be loaded: {exc}") from exc
    context.check_hostname = False
    return context


def decode_json(content: bytes) -> Any:
    # Ganeti answers JSON scalars too (a job id, null); an empty body means "nothing".
    if not content.strip():
        return None
    try:
        return json.loads(content)
    except ValueError as exc:
        raise UnexpectedShape(f"response is not JSON: {exc}") from exc


class RapiHttp:
    """One cluster's HTTP client: built lazily, so constructing it does no I/O."""

    def __init__(
        self,
        *,
        base_url: str,
        username: str | None,
        password: Secret | None,
        ca_pem: str | None,
        insecure: bool,
        timeout: float,
        transport: httpx.AsyncBaseTransport | None,
        max_attempts: int,
        backoff: float,
    ) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self._username = username
        self._password = password
        self._ca_pem = ca_pem
        self._insecure = insecure
        self._transport = transport
        self._max_attempts = max(1, max_attempts)
        self._backoff = backoff
        self._client: httpx.AsyncClient | None = None
        self._closed = False

    def _http(self) -> httpx.AsyncClient:
        if self._closed:
            raise RuntimeError("this RapiClient is closed")
        if self._client is None:
            auth = None
            if self._username is not None and self._password is not None:
                auth = httpx.BasicAuth(self._username, self._password.reveal())
            # An injected transport owns TLS itself; only build (and validate) the pin otherwise.
            verify = True if self._transport else build_ssl_context(self._ca_pem, self._insecure)
            self._client = httpx.AsyncClient(
                base_url=self.base_url,
                auth=auth,
                verify=verify,
                timeout=self._timeout(self.timeout),
                # The server closes every connection anyway (no keep-alive in any version).
                limits=httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=0),
                transport=self._transport,
                follow_redirects=False,
                # No proxies or .netrc credentials from the environment: the backend row decides.
                trust_env=False,
                headers={
                    "Accept": "application/json",
                    "User-Agent": f"ganeti-dispatcher/{__version__}",
                },
            )
        return self._client

    def _timeout(self, read: float) -> httpx.Timeout:
        # Only waiting for the answer gets longer on slow calls; connecting never does.
        return httpx.Timeout(read, connect=min(CONNECT_TIMEOUT, self.timeout))

    async def aclose(self) -> None:
        self._closed = True
        if self._client is not None:
            await self._client.aclose()

    async def call(
        self,
        operation: str,
        method: str,
        path: str,
        parse: Callable[[Any], T],
        *,
        query: Query = (),
        body: Any = None,
        retry: bool = False,
        read_timeout: float | None = None,
    ) -> T:
        """One RAPI call; ``body=None`` sends no body. ``retry`` only for calls that submit
        nothing: a job-submitting request that timed out may have created its job.
        ``read_timeout`` replaces the client's timeout for this call (connect stays short)."""
        params = encode_query(query)
        content: bytes | None = None
        headers: dict[str, str] = {}
        if body is not None:
            content = json.dumps(body, allow_nan=False).encode("utf-8")
            # Exactly this: Ganeti answers 415 to "application/json; charset=utf-8".
            headers["Content-Type"] = "application/json"
        attempts = self._max_attempts if retry else 1
        for attempt in range(1, attempts + 1):
            try:
                return await self._once(
                    operation, method, path, parse, params, content, headers, read_timeout
                )
            except RapiError as exc:
                if attempt >= attempts or not exc.transient:
                    raise
                delay = self._backoff * 2 ** (attempt - 1)
                log.warning(
                    "RAPI %s %s %s failed (%s), attempt %d of %d, retrying in %.1fs",
                    operation,
                    method,
                    path,
                    type(exc).__name__,
                    attempt,
                    attempts,
                    delay,
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(
        self,
        operation: str,
        method: str,
        path: str,
        parse: Callable[[Any], T],
        params: httpx.QueryParams,
        content: bytes | None,
        headers: dict[str, str],
        read_timeout: float | None,
    ) -> T:
        started = time.monotonic()
        outcome = "ok"
        status: int | None = None
        try:
            http = self._http()
            with rapi_errors(method, path):
                response = await http.request(
                    method,
                    path,
                    params=params,
                    content=content,
                    headers=headers,
                    timeout=(
                        self._timeout(read_timeout)
                        if read_timeout is not None
                        else httpx.USE_CLIENT_DEFAULT
                    ),
                )
            status = response.status_code
            if not response.is_success:
                raise error_from_response(status, response.content, method=method, path=path)
            try:
                return parse(decode_json(response.content))
            except UnexpectedShape as exc:
                raise RapiResponseError(
                    str(exc),
                    status=status,
                    method=method,
                    path=path,
                    body=response.content[:_BODY_EXCERPT].decode("utf-8", errors="replace"),
                ) from exc
        except BaseException as exc:
            outcome = type(exc).__name__
            raise
        finally:
            elapsed = time.monotonic() - started
            RAPI_REQUESTS.labels(operation=operation, outcome=outcome).inc()
            RAPI_SECONDS.labels(operation=operation).observe(elapsed)
            log.debug(
                "RAPI %s %s %s -> %s in %.3fs",
                operation,
                method,
                path,
                status if status is not None else outcome,
                elapsed,
            )
