"""The whole loop (issue 4) on the real Ganeti 3.0 sandbox, with nothing simulated and no
message published by hand:

    dispatcher CLI ─► RAPI ─► Ganeti jobs ─► job files ─► dispatcher eventd (in netns gnt)
        ─► RabbitMQ ─► dispatcher run ─► PostgreSQL ─► dispatcher server/network show --json

plus ``dispatcher progress-monitor`` inside the sandbox OS's create script (the sandbox's
SANDBOX_MONITOR_CMD hook), publishing build progress through the namespace's bridge to the
broker. Every assertion about the database is made through ``show --json``, polled with a
deadline.

Measured and printed (run with ``-s`` to see them):

- create → STARTED: from just before ``server create`` to the first ``show`` that says
  STARTED (and the row's ``updated`` minus ``created``);
- job end → database, for every job the loop waits on (eventd running): Ganeti's ``end_ts``
  (``GET /2/jobs/N``) to (a) the row's ``updated`` when the new state is first seen — the
  ``now()`` of the transaction that applied it, i.e. the commit within a few ms — and (b) the
  moment the first ``show`` showing the new state returned, an upper bound that includes up to
  one polling period (one CLI run, 1-3 s on a small machine).
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import os
import re
import secrets
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from dispatcher.rapi import RapiClient, RapiNotFound
from tests.sandbox.test_cluster_cli import VM_PASSWORD, _add_backend, _cleanup
from tests.support import PYTHON, ROOT, Env, daemon, wait_until
from tests.test_eventd_sandbox import _eventd_argv, _eventd_env, monitor_prefix

# real Ganeti jobs end to end (eventd, dispatcher run, an image copied at 2 MiB/s): ~85 s on
# 2 cores, so 4x that rather than the global 150 s
pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(360)]

JOB_BUDGET = 300.0  # seconds for a Ganeti job to end (they take 1-20 s on the sandbox)
DB_BUDGET = 120.0  # seconds from a job's end to its state in the database
BUILD_BUDGET = 300.0  # server create to STARTED, image copy included
IMAGES = Path("/srv/ganeti/images")
# The sandbox's copy-image reads 2 MiB/s: 32 MiB give ~16 s of BUILD with progress, long
# enough to see several values even when one `server show` takes 2-3 s.
IMAGE_BYTES = 32 * 1024 * 1024


def _ts(value: str | None) -> float:
    assert value is not None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _job_end(job: dict[str, Any]) -> float:
    sec, usec = job["end_ts"]
    return float(sec) + float(usec) / 1e6


# --------------------------------------------------------------------------- eventd process


class Eventd:
    """``ip netns exec gnt dispatcher eventd`` (as on a real master: the namespace's hosts
    file makes the node its FQDN, so the master check passes), RAPI NIC lookups as the
    read-only user, the broker through the sandbox's bridge. Stopped by pid."""

    def __init__(self, sandbox: dict[str, str]) -> None:
        self.sandbox = sandbox
        self.proc: subprocess.Popen[bytes] | None = None
        fd, name = tempfile.mkstemp(prefix="dispatcher-eventd-", suffix=".log")
        os.close(fd)
        self.log_path = Path(name)
        self.starts = 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def start(self, timeout: float = 120) -> None:
        assert self.proc is None or self.proc.poll() is not None
        self.starts += 1
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                _eventd_argv("netns", self.sandbox),
                env=_eventd_env(self.sandbox),
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        proc = self.proc

        def watching() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"eventd exited {proc.returncode}: {self.log()[-3000:]}")
            return self.log().count(" watching ") >= self.starts

        wait_until(watching, timeout, 0.1, "eventd watching the job queue")

    def stop(self, timeout: float = 60) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode


def _other_eventds(ours: Eventd) -> list[int]:
    """Pids of eventd processes this test did not start (another session's): they publish
    the same job files, so "nothing changes while ours is stopped" cannot be asserted."""
    mine = {ours.proc.pid} if ours.proc is not None else set()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"dispatcher" in b" ".join(argv) and b"eventd" in argv:
            found.append(int(entry.name))
    return found


# --------------------------------------------------------------------------- the loop's handle


@dataclass
class Lap:
    what: str
    job_id: int
    end: float  # Ganeti's end_ts
    updated: float  # the row's `updated` when the new state was first seen
    seen: float  # when the `show` that first showed it returned


@dataclass
class Loop:
    env: Env
    rapi: RapiClient
    laps: list[Lap] = field(default_factory=list)
    builds: list[tuple[str, float, float]] = field(default_factory=list)

    def server(self, vm_id: int) -> dict[str, Any]:
        return self.env.json("server", "show", str(vm_id))

    def network(self, net_id: int) -> dict[str, Any]:
        return self.env.json("network", "show", str(net_id))

    def poll(
        self,
        show: Callable[[], dict[str, Any]],
        ok: Callable[[dict[str, Any]], bool],
        what: str,
        timeout: float = DB_BUDGET,
        each: Callable[[dict[str, Any]], None] | None = None,
    ) -> tuple[dict[str, Any], float]:
        """Call ``show`` until ``ok`` holds; the document and when that call returned."""
        deadline = time.monotonic() + timeout
        while True:
            doc = show()
            seen = time.time()
            if each is not None:
                each(doc)
            if ok(doc):
                return doc, seen
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}: {doc}")
            time.sleep(0.1)

    async def job(self, job_id: int, expect: str = "success") -> dict[str, Any]:
        job = await self.rapi.wait_for_job(job_id, timeout=JOB_BUDGET)
        assert job["status"] == expect, f"job {job_id}: {job.get('opresult')}"
        return job

    async def lap(
        self,
        what: str,
        job_id: int,
        show: Callable[[], dict[str, Any]],
        ok: Callable[[dict[str, Any]], bool],
        timeout: float = DB_BUDGET,
        each: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Wait (in the database) for the state the job leads to, then record job end → DB."""
        doc, seen = self.poll(show, ok, what, timeout, each)
        job = await self.job(job_id)
        lap = Lap(what, job_id, _job_end(job), _ts(doc["updated"]), seen)
        self.laps.append(lap)
        print(
            f"  {what:<34} job {job_id:<5} end→updated {lap.updated - lap.end:6.2f} s"
            f"   end→seen {lap.seen - lap.end:6.2f} s"
        )
        return doc

    async def server_lap(
        self, what: str, vm_id: int, job_id: int, ok: Callable[[dict[str, Any]], bool]
    ) -> dict[str, Any]:
        def done(s: dict[str, Any]) -> bool:
            return s["backendjobid"] == job_id and s["backendjobstatus"] == "success" and ok(s)

        return await self.lap(what, job_id, lambda: self.server(vm_id), done)

    async def create(
        self, name: str, flavor: str, image: str, network: int, password_file: Path
    ) -> tuple[dict[str, Any], list[float]]:
        """``server create``, then BUILD → STARTED; returns the server and the build
        percentages seen while it was in BUILD."""
        t0 = time.time()
        proc = self.env.cli("server", "create", name, "--flavor", flavor, "--image", image,
                            "--password-file", str(password_file), "--network", str(network),
                            "--json")  # fmt: skip
        assert VM_PASSWORD not in proc.stdout + proc.stderr
        created = json.loads(proc.stdout)
        vm_id = created["id"]
        assert (created["operstate"], created["action"]) == ("BUILD", "CREATE"), created
        assert created["instance"] == f"{self.env.prefix}-{vm_id}"
        percentages: list[float] = []

        def each(s: dict[str, Any]) -> None:
            p = s["buildpercentage"]
            if s["operstate"] == "BUILD" and p is not None and p not in percentages:
                percentages.append(p)

        doc = await self.lap(
            f"create {name} → STARTED",
            created["backendjobid"],
            lambda: self.server(vm_id),
            lambda s: s["operstate"] == "STARTED",
            timeout=BUILD_BUDGET,
            each=each,
        )
        seen = self.laps[-1].seen
        self.builds.append((name, seen - t0, _ts(doc["updated"]) - _ts(doc["created"])))
        print(f"  create {name}: STARTED seen {seen - t0:.2f} s after `server create`; "
              f"build percentages seen {percentages}")  # fmt: skip
        return doc, percentages

    def report(self) -> None:
        print("\n== whole loop: measurements")
        for name, seen, updated in self.builds:
            print(f"create→STARTED {name}: first seen {seen:.2f} s after `server create` "
                  f"(row: updated - created = {updated:.2f} s)")  # fmt: skip
        if not self.laps:
            return
        for label, values in (
            ("job end → row updated (commit)", [lap.updated - lap.end for lap in self.laps]),
            ("job end → first seen by `show`", [lap.seen - lap.end for lap in self.laps]),
        ):
            print(f"{label}: median {statistics.median(values):.2f} s, worst "
                  f"{max(values):.2f} s over {len(values)} jobs")  # fmt: skip


def _nics_match(server: dict[str, Any], ganeti: dict[str, Any]) -> None:
    nics = server["nics"]
    assert [n["index"] for n in nics] == list(range(len(ganeti["nic.macs"])))
    assert [n["mac"] for n in nics] == ganeti["nic.macs"]
    assert [n["ipv4"] for n in nics] == ganeti["nic.ips"]


def _gnt_instance(netns: str, *args: str) -> int:
    """``gnt-instance ARGS --submit`` inside the namespace; the job id it prints."""
    done = subprocess.run(
        ["ip", "netns", "exec", netns, "gnt-instance", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"gnt-instance {' '.join(args)}: {done.stderr}"
    match = re.search(r"\d+", done.stdout)
    assert match, done.stdout
    return int(match.group())


@contextlib.contextmanager
def _test_image(name: str) -> Iterator[str]:
    """A sparse image file of IMAGE_BYTES for the sandbox OS to "deploy" (removed after)."""
    path = IMAGES / name
    with open(path, "wb") as fh:
        fh.truncate(IMAGE_BYTES)
    try:
        yield name
    finally:
        path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- the test


async def test_the_whole_loop(
    env: Env, ganeti_sandbox: dict[str, str], sandbox_rapi: RapiClient, tmp_path: Path
) -> None:
    sandbox, rapi, p = ganeti_sandbox, sandbox_rapi, env.prefix
    loop = Loop(env, rapi)
    eventd = Eventd(sandbox)
    password_file = tmp_path / "vm-password"
    password_file.write_text(VM_PASSWORD)
    third = secrets.randbelow(90)
    subnets = [ipaddress.ip_network(f"10.77.{5 + (third + i) % 95}.0/24") for i in (0, 1)]
    monitor = (
        f'{Path(PYTHON).with_name("dispatcher")} progress-monitor -i "$INSTANCE_NAME" '
        "-r <bytes> --interval 0.5 --"
    )
    t_start = time.monotonic()
    with contextlib.ExitStack() as stack:
        stack.callback(eventd.log_path.unlink, missing_ok=True)
        image = stack.enter_context(_test_image(f"{p}-image"))
        # the progress-monitor hook in the OS create script, taken away at the end
        stack.enter_context(monitor_prefix(monitor))
        # `dispatcher run` first: it declares the queues eventd's messages are routed to
        d = stack.enter_context(daemon(env))
        stack.callback(eventd.stop)
        try:
            eventd.start()
            await _loop(loop, eventd, sandbox, subnets, image, password_file)
            assert eventd.stop() == 0, eventd.log()[-3000:]
            assert d.proc is not None and d.proc.poll() is None, d.log()[-3000:]
            assert VM_PASSWORD not in d.log() + eventd.log()
        except BaseException:
            print("--- eventd log (tail)\n" + eventd.log()[-4000:])
            print("--- dispatcher run log (tail)\n" + d.log()[-4000:])
            raise
        finally:
            eventd.stop()
            loop.report()
            # the cluster's side, also on failure (the database is the env fixture's)
            await _cleanup(rapi, p)
    print(f"whole loop: {time.monotonic() - t_start:.0f} s")


async def _loop(
    loop: Loop,
    eventd: Eventd,
    sandbox: dict[str, str],
    subnets: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
    image: str,
    password_file: Path,
) -> None:
    env, rapi, p = loop.env, loop.rapi, loop.env.prefix

    # -- 1. backend, resources, networks (ACTIVE from eventd's network-status) --------------
    print("\n== 1. backend add, update-resources, network create")
    backend_id = _add_backend(env, sandbox)
    env.cli("backend", "update-resources", str(backend_id))
    backend = env.json("backend", "show", str(backend_id))
    assert backend["mtotal"] > 0 and backend["tls"] == "pinned", backend
    flavor = env.cli("flavor", "create", "--cpu", "1", "--ram", "128", "--disk", "1",
                     "--disk-template", "file").stdout.strip()  # fmt: skip
    nets: list[int] = []
    for i, subnet in enumerate(subnets):
        doc = env.json("network", "create", f"lan{i}", "--subnet", str(subnet),
                       "--gateway", str(subnet.network_address + 1))  # fmt: skip
        net_id = doc["id"]
        assert doc["state"] == "PENDING" and doc["instance"] == f"{p}-net-{net_id}"
        [jobs] = doc["jobs"]
        assert jobs["backend_id"] == backend_id and jobs["error"] is None, jobs
        for job in jobs["jobs"]["create"]:
            await loop.job(job)

        def active(n: dict[str, Any]) -> bool:
            return n["state"] == "ACTIVE" and [b["operstate"] for b in n["backends"]] == ["ACTIVE"]

        [connect] = jobs["jobs"]["connect"]
        show = functools.partial(loop.network, net_id)
        net = await loop.lap(f"network lan{i} → ACTIVE", connect, show, active)
        [entry] = net["backends"]
        assert (entry["backendjobid"], entry["backendopcode"]) == (connect, "OP_NETWORK_CONNECT")
        info = await rapi.get_network(f"{p}-net-{net_id}")
        assert info["network"] == str(subnet)
        nets.append(net_id)

    # -- 2. create: BUILD with progress, then STARTED with Ganeti's NICs ---------------------
    print("== 2. server create (file disk, image copied through progress-monitor)")
    s, percentages = await loop.create("web", flavor, image, nets[0], password_file)
    vm, inst = s["id"], s["instance"]
    assert any(0 < v < 100 for v in percentages) or (
        len(percentages) >= 2 and percentages == sorted(percentages)
    ), f"no build progress seen in BUILD: {percentages}"
    assert s["backendopcode"] == "OP_INSTANCE_CREATE"
    ganeti = await rapi.get_instance(inst)
    assert (ganeti["admin_state"], ganeti["oper_state"]) == ("up", True)
    _nics_match(s, ganeti)
    [nic] = s["nics"]
    assert nic["network_id"] == nets[0] and ipaddress.ip_address(nic["ipv4"]) in subnets[0]

    # -- 3. stop, start, reboot ---------------------------------------------------------------
    print("== 3. stop, start, reboot")
    job = int(env.cli("server", "stop", str(vm)).stdout)
    await loop.server_lap("stop → STOPPED", vm, job, lambda s: s["operstate"] == "STOPPED")
    job = int(env.cli("server", "start", str(vm)).stdout)
    await loop.server_lap("start → STARTED", vm, job, lambda s: s["operstate"] == "STARTED")
    doc = env.json("server", "reboot", str(vm))
    job = doc["job_id"]
    s = await loop.server_lap("reboot → STARTED", vm, job, lambda s: s["operstate"] == "STARTED")
    assert (s["backendjobid"], s["backendopcode"]) == (job, "OP_INSTANCE_REBOOT"), s

    # -- 4. connect to the second network, disconnect ----------------------------------------
    print("== 4. connect, disconnect")
    job = int(env.cli("server", "connect", str(vm), str(nets[1])).stdout)
    s = await loop.server_lap("connect → 2 NICs", vm, job, lambda s: len(s["nics"]) == 2)
    new = s["nics"][1]
    assert new["network_id"] == nets[1] and ipaddress.ip_address(new["ipv4"]) in subnets[1], s
    _nics_match(s, await rapi.get_instance(inst))
    job = int(env.cli("server", "disconnect", str(vm), "1").stdout)
    s = await loop.server_lap("disconnect → 1 NIC", vm, job, lambda s: len(s["nics"]) == 1)
    assert s["nics"][0]["network_id"] == nets[0]
    _nics_match(s, await rapi.get_instance(inst))

    # -- 5. firewall ----------------------------------------------------------------------------
    print("== 5. firewall ENABLED")
    doc = env.json("server", "firewall", str(vm), "ENABLED")
    for job in doc["job_ids"][:-1]:
        await loop.job(job)
    await loop.server_lap("firewall → ENABLED", vm, doc["job_id"],
                          lambda s: s["nics"][0]["firewall_profile"] == "ENABLED")  # fmt: skip
    assert "synnefo:network:0:protected" in await rapi.get_instance_tags(inst)

    # -- 6. remove -------------------------------------------------------------------------------
    print("== 6. remove")
    job = int(env.cli("server", "remove", str(vm)).stdout)
    s = await loop.server_lap("remove → DESTROYED", vm, job,
                              lambda s: s["deleted"] and s["operstate"] == "DESTROYED")  # fmt: skip
    assert s["nics"] == []
    with pytest.raises(RapiNotFound):
        await rapi.get_instance(inst)

    # -- 7. eventd down, Ganeti's own CLI, eventd up: the database catches up --------------------
    print("== 7. eventd stopped, gnt-instance startup/shutdown, eventd started again")
    s2, _ = await loop.create("catchup", flavor, image, nets[0], password_file)
    vm2, inst2 = s2["id"], s2["instance"]
    assert eventd.stop() == 0, eventd.log()[-3000:]
    netns = sandbox["GANETI_SANDBOX_NETNS"]
    startup = _gnt_instance(netns, "startup", "--submit", inst2)
    await loop.job(startup)
    shutdown = _gnt_instance(netns, "shutdown", "--submit", inst2)
    shut = await loop.job(shutdown)
    ganeti = await rapi.get_instance(inst2)
    assert (ganeti["admin_state"], ganeti["oper_state"]) == ("down", False)
    others = _other_eventds(eventd)
    if others:
        print(f"  (other eventd processes run: {others}; not checking that the database "
              "stood still)")  # fmt: skip
    else:
        s = loop.server(vm2)
        assert (s["operstate"], s["backendjobid"]) == ("STARTED", s2["backendjobid"]), s
    t_up = time.time()
    eventd.start()

    def caught_up(s: dict[str, Any]) -> bool:
        return bool(s["operstate"] == "STOPPED" and s["backendjobid"] == shutdown)

    s, seen = loop.poll(lambda: loop.server(vm2), caught_up, "catch-up after eventd restart")
    assert (s["backendopcode"], s["backendjobstatus"]) == ("OP_INSTANCE_SHUTDOWN", "success")
    print(f"  catch-up: STOPPED (job {shutdown}) seen {seen - t_up:.2f} s after eventd was "
          f"started again; row updated {_ts(s['updated']) - _job_end(shut):.2f} s after the "
          "job ended (while eventd was down)")  # fmt: skip

    # -- and down again through the CLI: the second server, both networks ---------------------
    print("== teardown through the CLI")
    job = int(env.cli("server", "remove", str(vm2)).stdout)
    await loop.server_lap("remove catchup → DESTROYED", vm2, job,
                          lambda s: s["deleted"] and s["operstate"] == "DESTROYED")  # fmt: skip
    for net_id in nets:
        doc = env.json("network", "remove", str(net_id))
        [jobs] = doc["jobs"]
        for job in jobs["jobs"]["disconnect"]:
            await loop.job(job)
        [delete] = jobs["jobs"]["delete"]
        show = functools.partial(loop.network, net_id)
        await loop.lap(f"network {net_id} remove → deleted", delete, show, lambda n: n["deleted"])
        with pytest.raises(RapiNotFound):
            await rapi.get_network(f"{p}-net-{net_id}")
