"""Test tooling shared by the suites: real services, per-test databases and AMQP prefixes,
the daemon as a subprocess, and polling with a deadline (never a fixed sleep)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import httpx

if TYPE_CHECKING:
    from dispatcher.rapi import RapiClient
    from dispatcher.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
SERVICES = ROOT / "scripts" / "services.sh"
SANDBOX = ROOT / "scripts" / "ganeti-sandbox.sh"


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str = "condition",
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


async def async_wait_until(
    predicate: Callable[[], Awaitable[Any]],
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str = "condition",
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_db(url: str, db: str) -> str:
    """``url`` pointing at database ``db``."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


def pg_dsn(url: str) -> str:
    """The SQLAlchemy URL as a DSN asyncpg takes."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def as_postgres(database: str, sql: str) -> str:
    """Run ``sql`` as the superuser, which only the local postgres account is; its output."""
    psql = ["psql", "-XAtq", "-v", "ON_ERROR_STOP=1"]
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", *psql, "-d", database, "-c", sql],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    ).stdout


def run_script(script: Path, *args: str, timeout: float) -> str:
    """``bash script args...``'s output; a failure raises with the script's own stderr."""
    done = subprocess.run(
        ["bash", str(script), *args], capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"scripts/{script.name} {' '.join(args)} exited {done.returncode}: "
            f"{done.stderr.strip()[-2000:]}"
        )
    return done.stdout


def script_env(script: Path) -> dict[str, str]:
    """The variables ``script env`` prints (``export K='v'`` lines), as a dict."""
    env: dict[str, str] = {}
    for line in run_script(script, "env", timeout=60).splitlines():
        key, sep, value = line.removeprefix("export ").strip().partition("=")
        if sep:
            env[key] = value.strip("'\"")
    return env


def sandbox_env() -> dict[str, str]:
    """The Ganeti sandbox's ``env`` (GANETI_SANDBOX_HOST, _PORT, ...), started if it is not
    up (a sandbox that cannot start fails the tests that need it, never skips them)."""
    run_script(SANDBOX, "start", timeout=900)  # idempotent: a no-op when the cluster is up
    return script_env(SANDBOX)


def sandbox_client(
    env: dict[str, str], password: str | None = None, timeout: float = 60
) -> RapiClient:
    """A RapiClient on the sandbox of ``env``; ``password`` overrides the real one."""
    from dispatcher.rapi import RapiClient

    return RapiClient(
        env["GANETI_SANDBOX_HOST"],
        int(env["GANETI_SANDBOX_PORT"]),
        env["GANETI_SANDBOX_USER"],
        password or Path(env["GANETI_SANDBOX_PASSWORD_FILE"]).read_text().strip(),
        ca_pem=Path(env["GANETI_SANDBOX_CA_FILE"]).read_text(),
        timeout=timeout,
    )


def unique_prefix() -> str:
    return "t" + secrets.token_hex(4)


@dataclass
class Env:
    """The environment of one test: its own database and its own queue prefix."""

    vars: dict[str, str]
    database: str

    @property
    def prefix(self) -> str:
        return self.vars["DISPATCHER_PREFIX"]

    def cli(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 120,
        extra: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **self.vars, **(extra or {})}
        proc = subprocess.run(
            [PYTHON, "-m", "dispatcher", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"dispatcher {' '.join(args)} exited {proc.returncode}: "
                f"{proc.stderr.strip()[-2000:]}"
            )
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def settings(self, **overrides: Any) -> Settings:
        from dispatcher.settings import Settings

        values: dict[str, Any] = {
            k[len("DISPATCHER_") :].lower(): v
            for k, v in self.vars.items()
            if k.startswith("DISPATCHER_")
        }
        values.update(overrides)
        return Settings(**values)


@dataclass
class Daemon:
    """``dispatcher run`` as a child process, stopped by pid."""

    env: Env
    extra: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    log_path: Path | None = None

    def start(self, wait_ready: bool = True) -> Daemon:
        self.port = free_port()
        env = {
            **os.environ,
            **self.env.vars,
            "DISPATCHER_HTTP_LISTEN": f"127.0.0.1:{self.port}",
            **self.extra,
        }
        import tempfile

        fd, name = tempfile.mkstemp(prefix="dispatcher-run-", suffix=".log")
        os.close(fd)
        self.log_path = Path(name)
        with open(name, "wb") as log:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "dispatcher", "run"],
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait_ready:
            self.wait_ready()
        return self

    def ready(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 60) -> None:
        def ok() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.log()[-3000:]}")
            return self.ready()

        wait_until(ok, timeout, 0.1, "daemon readiness")

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def daemon(env: Env, **extra: str) -> Iterator[Daemon]:
    d = Daemon(env, extra).start()
    try:
        yield d
    finally:
        d.stop()


def op_status(
    instance: str, operation: str, job: int, status: str, t: tuple[int, int], **extra: Any
) -> dict[str, Any]:
    return {
        "type": "ganeti-op-status",
        "instance": instance,
        "operation": operation,
        "jobId": job,
        "status": status,
        "logmsg": None,
        "event_time": list(t),
        **extra,
    }


class Gate:
    """Holds the daemon in the middle of a batch, so that a fault meant for "mid-stream"
    hits a stream in progress on any machine, however fast.

    A transaction of the test's own takes an EXCLUSIVE lock on the history tables, which
    every batch writes (even one of duplicates only); plain reads, such as the CLI's, and the
    rows ``simulate`` creates still pass. A daemon that takes a batch then waits in it, its
    deliveries unacknowledged, and everything past its prefetch stays on the queues.
    :meth:`blocked` is the daemon's own signal that it got there."""

    TABLES = ("vm_events", "network_events", "vm_diagnostics")

    def __init__(self, env: Env) -> None:
        self._dsn = pg_dsn(env.vars["DISPATCHER_DATABASE_URL"])
        self._conn: Any = None

    async def close(self) -> Gate:
        import asyncpg

        self._conn = await asyncpg.connect(self._dsn)
        await self._conn.execute("BEGIN")
        await self._conn.execute(f"LOCK TABLE {', '.join(self.TABLES)} IN EXCLUSIVE MODE")
        return self

    async def waiting(self) -> int:
        """Sessions of other processes waiting for a lock in this database."""
        import asyncpg

        conn = await asyncpg.connect(self._dsn)
        try:
            # by session: a daemon may wait on the gate's table lock or, behind another
            # daemon, on a row that one holds (a transaction id, in no database)
            n = await conn.fetchval(
                "SELECT count(DISTINCT l.pid) FROM pg_locks l"
                " JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE NOT l.granted AND a.datname = current_database()"
            )
        finally:
            await conn.close()
        return int(n)

    async def blocked(self, sessions: int = 1, timeout: float = 120) -> None:
        """Poll until ``sessions`` daemons wait at the gate, each with a batch in hand."""

        async def enough() -> bool:
            return await self.waiting() >= sessions

        await async_wait_until(enough, timeout, 0.05, f"{sessions} daemon(s) held at the gate")

    async def open(self) -> None:
        """Roll the lock back; a connection a fault already cut counts as open."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(Exception):  # the server may have ended it (an outage)
            await conn.execute("ROLLBACK")
        with contextlib.suppress(Exception):
            await conn.close(timeout=5)


async def until_true(
    predicate: Callable[[], Any],
    timeout: float = 30.0,
    interval: float = 0.01,
    what: str = "condition",
) -> Any:
    """:func:`async_wait_until` for a plain (not async) predicate."""

    async def check() -> Any:
        return predicate()

    return await async_wait_until(check, timeout, interval, what)
