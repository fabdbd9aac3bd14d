"""Errors raised by the Ganeti RAPI client.

Nothing from httpx (or ``ssl``) leaves the client: :func:`rapi_errors` and
:func:`error_from_response` are the only places where foreign failures become ours, so that
callers can decide what to do by *type*::

    RapiError                    any failed RAPI call (.status, .message, .explain, .method, .path)
    ├── RapiAuthError            401/403: the credentials or the user's rights are wrong
    │   ├── RapiUnauthorized     401: no or wrong credentials
    │   └── RapiForbidden        403: the user lacks the ``write``/``read`` option
    ├── RapiNotFound             404, or a job id the server does not know
    ├── RapiBadRequest           other 4xx: Ganeti refused the request as malformed or invalid
    ├── RapiServerError          5xx; ``transient`` for 502/503/504 (master unreachable, queue full)
    ├── RapiTimeout              no answer in time (a request, or wait_for_job's overall budget)
    ├── RapiConnectionError      connection refused, reset or closed; no usable HTTP response
    ├── RapiCertificateError     the server's TLS certificate was not trusted (or the pin is bad)
    ├── RapiResponseError        a 2xx answer that is not JSON or not of the expected shape
    └── RapiUnsupported          the server's Ganeti version cannot do what was asked; nothing sent

``transient`` says whether repeating the same call later may succeed. A job that *fails* is not
an error here: Ganeti answers 200 and the failure is in the job status.
"""

from __future__ import annotations

import contextlib
import html
import json
import ssl
from collections.abc import Iterator
from typing import ClassVar

import httpx

from dispatcher.oneline import one_line

__all__ = [
    "RapiAuthError",
    "RapiBadRequest",
    "RapiCertificateError",
    "RapiConnectionError",
    "RapiError",
    "RapiForbidden",
    "RapiNotFound",
    "RapiResponseError",
    "RapiServerError",
    "RapiTimeout",
    "RapiUnauthorized",
    "RapiUnsupported",
    "error_from_response",
    "rapi_errors",
]

# Enough of a non-JSON error page (a proxy's HTML, a traceback) to recognise it, no more.
_BODY_EXCERPT = 2048
_TRANSIENT_STATUSES = frozenset({502, 503, 504})


class RapiError(Exception):
    """A RAPI call failed. ``message`` is Ganeti's own text, already HTML-unescaped."""

    _transient: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        explain: str | None = None,
        method: str | None = None,
        path: str | None = None,
        body: str | None = None,
    ) -> None:
        self.message = message
        self.status = status
        self.explain = explain
        self.method = method
        self.path = path
        self.body = body
        super().__init__(self._describe())

    def _describe(self) -> str:
        where = f"{self.method} {self.path}: " if self.method and self.path else ""
        status = f"HTTP {self.status}: " if self.status is not None else ""
        explain = f" ({self.explain})" if self.explain and self.explain != self.message else ""
        return f"{where}{status}{self.message}{explain}"

    def __str__(self) -> str:
        return self._describe()

    @property
    def transient(self) -> bool:
        """Whether the same call may succeed if repeated later."""
        return self._transient


class RapiAuthError(RapiError):
    """401 or 403."""


class RapiUnauthorized(RapiAuthError):
    """401: no credentials, or wrong ones (Ganeti checks them even on anonymous reads)."""


class RapiForbidden(RapiAuthError):
    """403: the user exists but lacks the right, e.g. a read-only user submitting a job."""


class RapiNotFound(RapiError):
    """404, or a job the server no longer knows (Ganeti >= 2.11 answers 200 with status null)."""


class RapiBadRequest(RapiError):
    """A 4xx other than 401/403/404: unknown or static body key, bad value, wrong content type."""


class RapiServerError(RapiError):
    """A 5xx. 500 is an unhandled exception in the daemon and usually repeats; 502-504 do not."""

    @property
    def transient(self) -> bool:
        return self.status in _TRANSIENT_STATUSES


class RapiTimeout(RapiError):
    """No answer in time. For a job-submitting call the job may still have been created."""

    _transient = True


class RapiConnectionError(RapiError):
    """No usable HTTP response: refused, reset, or a TLS failure other than trust."""

    _transient = True


class RapiCertificateError(RapiError):
    """The TLS certificate was not trusted, or the pinned CA text could not be loaded."""


class RapiResponseError(RapiError):
    """A success status whose body is not JSON, or not the shape the call documents."""


class RapiUnsupported(RapiError):
    """The cluster's Ganeti release lacks what the call needs; nothing was sent."""


_STATUS_CLASSES: dict[int, type[RapiError]] = {
    401: RapiUnauthorized,
    403: RapiForbidden,
    404: RapiNotFound,
}


def _class_for_status(status: int) -> type[RapiError]:
    if status in _STATUS_CLASSES:
        return _STATUS_CLASSES[status]
    if 400 <= status < 500:
        return RapiBadRequest
    if status >= 500:
        return RapiServerError
    return RapiError


def error_from_response(status: int, content: bytes, *, method: str, path: str) -> RapiError:
    """Build the error for a non-2xx response.

    Ganeti's body is ``{"code", "message", "explain"}`` with the message HTML-escaped; anything
    else (a proxy's page, an empty body) still yields an error carrying the status.
    """
    text = content.decode("utf-8", errors="replace")
    message: str | None = None
    explain: str | None = None
    try:
        data = json.loads(text) if text.strip() else None
    except ValueError:
        data = None
    if isinstance(data, dict):
        if data.get("message") is not None:
            message = html.unescape(str(data["message"]))
        if data.get("explain") is not None:
            explain = html.unescape(str(data["explain"]))
    elif isinstance(data, str):
        message = html.unescape(data)
    if message is None:
        message = one_line(text) or "no error message"
    return _class_for_status(status)(
        message,
        status=status,
        explain=explain,
        method=method,
        path=path,
        body=text[:_BODY_EXCERPT],
    )


def _causes(exc: BaseException) -> Iterator[BaseException]:
    # httpx wraps httpcore, which wraps ssl; depending on the backend the original ends up in
    # __cause__, __context__ or just in args, so look everywhere (bounded, cycles ignored).
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo and len(seen) < 32:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo.extend(a for a in current.args if isinstance(a, BaseException))
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                todo.append(linked)


def _is_certificate_failure(exc: BaseException) -> bool:
    return any(isinstance(c, ssl.SSLCertVerificationError) for c in _causes(exc))


def _transport_error(exc: Exception, method: str, path: str) -> RapiError:
    kind = type(exc).__name__
    detail = str(exc) or kind
    cls: type[RapiError]
    if isinstance(exc, httpx.TimeoutException):
        cls, text = RapiTimeout, f"timed out ({kind}): {detail}"
    elif _is_certificate_failure(exc):
        cls, text = RapiCertificateError, f"TLS certificate not trusted: {detail}"
    elif isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        cls, text = RapiError, f"bad request URL ({kind}): {detail}"
    elif isinstance(exc, httpx.DecodingError):
        cls, text = RapiResponseError, f"undecodable response: {detail}"
    elif isinstance(exc, httpx.TransportError | ssl.SSLError | OSError):
        cls, text = RapiConnectionError, f"connection failed ({kind}): {detail}"
    else:
        cls, text = RapiError, f"request failed ({kind}): {detail}"
    return cls(text, method=method, path=path)


@contextlib.contextmanager
def rapi_errors(method: str, path: str) -> Iterator[None]:
    """The one boundary where httpx/ssl exceptions become :class:`RapiError`."""
    try:
        yield
    except (httpx.HTTPError, httpx.InvalidURL, ssl.SSLError, OSError) as exc:
        raise _transport_error(exc, method, path) from exc
