"""Error mapping of the RAPI client: every HTTP and transport failure becomes a typed
``RapiError`` without leaking credentials; plus real TLS against a local HTTPS server."""

from __future__ import annotations

import http.server
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from dispatcher.rapi import (
    RapiAuthError,
    RapiBadRequest,
    RapiCertificateError,
    RapiClient,
    RapiConnectionError,
    RapiError,
    RapiForbidden,
    RapiNotFound,
    RapiResponseError,
    RapiServerError,
    RapiTimeout,
    RapiUnauthorized,
)

PASSWORD = "pa55-w0rd-&-more"
Reply = httpx.Response | Exception


def scripted(*replies: Reply) -> tuple[RapiClient, list[httpx.Request]]:
    queue = list(replies)
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        reply = queue.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply

    client = RapiClient(
        "cluster.example.org",
        username="dispatcher",
        password=PASSWORD,
        transport=httpx.MockTransport(handler),
        backoff=0,
    )
    return client, seen


def assert_clean(error: RapiError) -> None:
    for text in (str(error), repr(error), error.message, str(error.explain), str(error.body)):
        assert PASSWORD not in text


def ganeti_error(status: int, message: str, explain: str) -> httpx.Response:
    return httpx.Response(status, json={"code": status, "message": message, "explain": explain})


# -- HTTP statuses ----------------------------------------------------------------------------


async def test_401_unauthorized() -> None:
    rapi, _ = scripted(
        ganeti_error(401, "Unauthorized", "No permission -- see authorization schemes")
    )
    async with rapi:
        with pytest.raises(RapiUnauthorized) as caught:
            await rapi.get_instances()
    error = caught.value
    assert isinstance(error, RapiAuthError)
    assert (error.status, error.message) == (401, "Unauthorized")
    assert error.explain == "No permission -- see authorization schemes"
    assert (error.method, error.path) == ("GET", "/2/instances")
    assert str(error) == (
        "GET /2/instances: HTTP 401: Unauthorized (No permission -- see authorization schemes)"
    )
    assert not error.transient
    assert_clean(error)


async def test_403_forbidden() -> None:
    rapi, _ = scripted(
        ganeti_error(403, "Forbidden", "Request forbidden -- authorization will not help")
    )
    async with rapi:
        with pytest.raises(RapiForbidden) as caught:
            await rapi.startup_instance("snf-1")
    assert isinstance(caught.value, RapiAuthError)
    assert caught.value.status == 403
    assert (caught.value.method, caught.value.path) == ("PUT", "/2/instances/snf-1/startup")
    assert_clean(caught.value)


async def test_404_not_found() -> None:
    rapi, _ = scripted(ganeti_error(404, "Not Found", "Nothing matches the given URI"))
    async with rapi:
        with pytest.raises(RapiNotFound) as caught:
            await rapi.get_instance("snf-404")
    assert (caught.value.status, caught.value.message) == (404, "Not Found")
    assert_clean(caught.value)


async def test_500_message_is_html_unescaped() -> None:
    escaped = "Instance &#x27;snf-1&#x27; has &quot;quotes&quot; &amp; &lt;tags&gt;"
    rapi, seen = scripted(ganeti_error(500, escaped, "Server Error"))
    async with rapi:
        with pytest.raises(RapiServerError) as caught:
            await rapi.get_instance("snf-1")
    error = caught.value
    assert error.message == "Instance 'snf-1' has \"quotes\" & <tags>"
    assert error.status == 500
    assert error.explain == "Server Error"
    assert "Instance 'snf-1'" in str(error)
    assert not error.transient
    assert len(seen) == 1
    assert_clean(error)


async def test_400_bad_request() -> None:
    message = (
        "Invalid body parameters: (&quot;Parameter &#x27;OP_INSTANCE_CREATE.disks&#x27; "
        "fails validation&quot;, &#x27;wrong_input&#x27;)"
    )
    rapi, _ = scripted(ganeti_error(400, message, "Bad request"))
    async with rapi:
        with pytest.raises(RapiBadRequest) as caught:
            await rapi.create_instance({"mode": "create", "disks": "x"})
    assert caught.value.message == (
        "Invalid body parameters: (\"Parameter 'OP_INSTANCE_CREATE.disks' fails validation\", "
        "'wrong_input')"
    )


@pytest.mark.parametrize(("status", "transient"), [(502, True), (503, True), (504, True)])
async def test_5xx_transient(status: int, transient: bool) -> None:
    rapi, _ = scripted(ganeti_error(status, "Job queue full", "x"))
    async with rapi:
        with pytest.raises(RapiServerError) as caught:
            await rapi.cancel_job(3)
    assert caught.value.transient is transient


async def test_non_json_error_body() -> None:
    page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
    rapi, _ = scripted(*(httpx.Response(502, content=page) for _ in range(3)))
    async with rapi:
        with pytest.raises(RapiServerError) as caught:
            await rapi.get_info()
    assert caught.value.status == 502
    assert "502 Bad Gateway" in caught.value.message
    assert caught.value.body == page.decode()


async def test_empty_error_body() -> None:
    rapi, _ = scripted(httpx.Response(404))
    async with rapi:
        with pytest.raises(RapiNotFound) as caught:
            await rapi.get_node("node9")
    assert caught.value.message == "no error message"


async def test_malformed_json() -> None:
    rapi, _ = scripted(httpx.Response(200, content=b'{"name": "snf-1",'))
    async with rapi:
        with pytest.raises(RapiResponseError) as caught:
            await rapi.get_instance("snf-1")
    assert caught.value.status == 200
    assert "not JSON" in caught.value.message
    assert caught.value.body == '{"name": "snf-1",'
    assert_clean(caught.value)


async def test_empty_success_body_is_null() -> None:
    rapi, _ = scripted(httpx.Response(200, content=b""), httpx.Response(200, content=b""))
    async with rapi:
        assert await rapi.wait_for_job_change(1, ["status"], None, None) is None
        with pytest.raises(RapiResponseError):
            await rapi.get_instance("snf-1")


# -- transport failures -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ReadTimeout("read timed out"),
        httpx.ConnectTimeout("connect timed out"),
        httpx.WriteTimeout("write timed out"),
        httpx.PoolTimeout("pool"),
    ],
)
async def test_timeouts(failure: Exception) -> None:
    rapi, seen = scripted(failure)
    async with rapi:
        with pytest.raises(RapiTimeout) as caught:
            await rapi.delete_instance("snf-1")
    assert caught.value.transient
    assert caught.value.status is None
    assert isinstance(caught.value.__cause__, httpx.TimeoutException)
    assert (caught.value.method, caught.value.path) == ("DELETE", "/2/instances/snf-1")
    assert len(seen) == 1
    assert_clean(caught.value)


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("[Errno 111] Connection refused"),
        httpx.ReadError("connection reset"),
        httpx.RemoteProtocolError("server disconnected"),
    ],
)
async def test_connection_failures(failure: Exception) -> None:
    rapi, _ = scripted(failure, failure, failure)
    async with rapi:
        with pytest.raises(RapiConnectionError) as caught:
            await rapi.get_groups()
    assert caught.value.transient
    assert_clean(caught.value)


def certificate_failure() -> httpx.ConnectError:
    cause = ssl.SSLCertVerificationError(
        1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate"
    )
    try:
        raise httpx.ConnectError(str(cause)) from cause
    except httpx.ConnectError as exc:
        return exc


def certificate_failure_in_args() -> httpx.ConnectError:
    # What httpx really raises: the ssl error sits in the args of the wrapped httpcore error.
    inner = httpx.ConnectError(ssl.SSLCertVerificationError(1, "hostname mismatch"))  # type: ignore[arg-type]
    try:
        raise httpx.ConnectError("wrapped") from inner
    except httpx.ConnectError as exc:
        return exc


@pytest.mark.parametrize("failure", [certificate_failure, certificate_failure_in_args])
async def test_certificate_mismatch(failure: Callable[[], Exception]) -> None:
    rapi, seen = scripted(failure())
    async with rapi:
        with pytest.raises(RapiCertificateError) as caught:
            await rapi.get_version()
    assert not isinstance(caught.value, RapiConnectionError)
    assert not caught.value.transient
    assert len(seen) == 1  # a bad certificate does not get better by retrying
    assert_clean(caught.value)


async def test_no_httpx_exception_escapes_unknown_http_errors() -> None:
    rapi, seen = scripted(httpx.UnsupportedProtocol("nope"), httpx.TooManyRedirects("loop"))
    async with rapi:
        with pytest.raises(RapiError) as first:
            await rapi.get_version()
        with pytest.raises(RapiError) as second:
            await rapi.get_version()
    assert not first.value.transient
    assert not second.value.transient
    assert len(seen) == 2


def test_error_hierarchy() -> None:
    for cls in (
        RapiAuthError,
        RapiBadRequest,
        RapiCertificateError,
        RapiConnectionError,
        RapiNotFound,
        RapiResponseError,
        RapiServerError,
        RapiTimeout,
    ):
        assert issubclass(cls, RapiError)
    assert issubclass(RapiUnauthorized, RapiAuthError)
    assert issubclass(RapiForbidden, RapiAuthError)
    error = RapiError("boom")
    assert (error.status, str(error)) == (None, "boom")


# -- real TLS against a local HTTPS server ----------------------------------------------------


@dataclass
class Cert:
    pem: str
    cert_file: Path
    key_file: Path


def make_cert(directory: Path, name: str, common_name: str) -> Cert:
    """A throwaway self-signed certificate, as ``gnt-cluster init`` makes (CN not the host)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", f"/CN={common_name}",
            "-keyout", str(key_file), "-out", str(cert_file),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return Cert(cert_file.read_text(), cert_file, key_file)


class VersionHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"2" if self.path == "/version" else b"null"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Cert]:
    directory = tmp_path_factory.mktemp("rapi-tls")
    return {
        "server": make_cert(directory, "server", "ganeti.example.com"),
        "other": make_cert(directory, "other", "ganeti.example.com"),
    }


@pytest.fixture(scope="module")
def https_port(certs: dict[str, Cert]) -> Iterator[int]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs["server"].cert_file, certs["server"].key_file)
    # Bound and listening once constructed, so no start-up race with the tests.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), VersionHandler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


async def test_tls_pinned_certificate_works_despite_hostname_mismatch(
    https_port: int, certs: dict[str, Cert]
) -> None:
    async with RapiClient("127.0.0.1", https_port, ca_pem=certs["server"].pem) as rapi:
        assert await rapi.get_version() == 2


async def test_tls_without_pin_rejects_self_signed(https_port: int) -> None:
    async with RapiClient("127.0.0.1", https_port, "u", PASSWORD, backoff=0) as rapi:
        with pytest.raises(RapiCertificateError) as caught:
            await rapi.get_version()
    assert_clean(caught.value)


async def test_tls_wrong_pin_rejected(https_port: int, certs: dict[str, Cert]) -> None:
    async with RapiClient("127.0.0.1", https_port, ca_pem=certs["other"].pem) as rapi:
        with pytest.raises(RapiCertificateError):
            await rapi.get_version()


async def test_tls_insecure_works(https_port: int) -> None:
    async with RapiClient("127.0.0.1", https_port, insecure=True) as rapi:
        assert await rapi.get_version() == 2


async def test_tls_unloadable_pin() -> None:
    async with RapiClient("127.0.0.1", 1, ca_pem="not a certificate") as rapi:
        with pytest.raises(RapiCertificateError, match="pinned CA"):
            await rapi.get_version()


async def test_real_connection_refused() -> None:
    # A bound socket that never listens refuses connections, and nothing else can take the port.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        async with RapiClient("127.0.0.1", port, insecure=True, backoff=0) as rapi:
            with pytest.raises(RapiConnectionError):
                await rapi.get_version()
