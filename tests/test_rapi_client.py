"""Request shapes, response parsing, retries, version gating and wait_for_job of RapiClient.

Every test talks to a scripted ``httpx.MockTransport``: it asserts what went on the wire the way
the Ganeti server would read it (``parse_qs`` for the query, JSON for the body).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from dispatcher.metrics import REGISTRY
from dispatcher.rapi import (
    RapiClient,
    RapiError,
    RapiNotFound,
    RapiResponseError,
    RapiServerError,
    RapiTimeout,
    RapiUnsupported,
    parse_software_version,
)

PASSWORD = "s3cr3t-pa55"
Reply = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    content: bytes
    headers: httpx.Headers
    timeout: dict[str, float]


class FakeRapi:
    """Serves scripted replies in order; answers ``GET /2/info`` itself when ``version`` is set
    (those requests are counted in ``info_calls``, not in ``seen``)."""

    def __init__(self, *replies: Reply, version: str | None = "3.0.2") -> None:
        self.replies: deque[Reply] = deque(replies)
        self.version = version
        self.seen: list[Seen] = []
        self.info_calls = 0

    def add(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.version is not None and request.url.path == "/2/info":
            self.info_calls += 1
            return httpx.Response(200, json={"software_version": self.version, "name": "c1"})
        content = request.read()
        self.seen.append(
            Seen(
                request.method,
                request.url.path,
                parse_qs(request.url.query.decode("ascii")),
                json.loads(content) if content else None,
                content,
                request.headers,
                request.extensions["timeout"],
            )
        )
        reply = self.replies.popleft()
        if isinstance(reply, Exception):
            raise reply
        if callable(reply):
            return reply(request)
        return reply

    @property
    def last(self) -> Seen:
        return self.seen[-1]


def ok(value: Any) -> httpx.Response:
    return httpx.Response(200, json=value)


def client_for(fake: FakeRapi, **kwargs: Any) -> RapiClient:
    kwargs.setdefault("backoff", 0)
    return RapiClient(
        "cluster.example.org",
        5080,
        "dispatcher",
        PASSWORD,
        transport=httpx.MockTransport(fake),
        **kwargs,
    )


# -- discovery --------------------------------------------------------------------------------


async def test_get_version() -> None:
    fake = FakeRapi(ok(2))
    async with client_for(fake) as rapi:
        assert await rapi.get_version() == 2
    assert (fake.last.method, fake.last.path, fake.last.query, fake.last.content) == (
        "GET",
        "/version",
        {},
        b"",
    )


async def test_get_info_caches_software_version() -> None:
    fake = FakeRapi(version="2.16.2")
    async with client_for(fake) as rapi:
        info = await rapi.get_info()
        assert info["name"] == "c1"
        assert await rapi.get_software_version() == (2, 16, 2)
        assert await rapi.get_software_version() == (2, 16, 2)
    assert fake.info_calls == 1


async def test_software_version_is_fetched_once_under_concurrency() -> None:
    fake = FakeRapi(version="3.1.1")
    async with client_for(fake) as rapi:
        versions = await asyncio.gather(*(rapi.get_software_version() for _ in range(5)))
    assert versions == [(3, 1, 1)] * 5
    assert fake.info_calls == 1


async def test_software_version_missing_is_a_response_error() -> None:
    fake = FakeRapi(ok({"name": "c1"}), version=None)
    async with client_for(fake) as rapi:
        with pytest.raises(RapiResponseError, match="software_version"):
            await rapi.get_software_version()


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2.6.2", (2, 6, 2)), ("3.0", (3, 0, 0)), ("2.16.0~rc1", (2, 16, 0)), ("3.1.1-2", (3, 1, 1))],
)
def test_parse_software_version(text: str, expected: tuple[int, int, int]) -> None:
    assert parse_software_version(text) == expected


@pytest.mark.parametrize("bad", [None, "", "three", 3])
def test_parse_software_version_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_software_version(bad)


async def test_get_features_and_404_means_none() -> None:
    fake = FakeRapi(ok(["instance-create-reqv1", "node-evac-res1"]), httpx.Response(404))
    async with client_for(fake) as rapi:
        assert await rapi.get_features() == ["instance-create-reqv1", "node-evac-res1"]
        assert await rapi.get_features() == []
    assert [s.path for s in fake.seen] == ["/2/features", "/2/features"]


# -- instances --------------------------------------------------------------------------------


async def test_get_instances_names_and_bulk() -> None:
    fake = FakeRapi(
        ok([{"id": "vm-1", "uri": "/2/instances/vm-1"}, {"id": "vm-2", "uri": "/x"}]),
        ok([{"name": "vm-1", "oper_state": True}]),
    )
    async with client_for(fake) as rapi:
        assert await rapi.get_instances() == ["vm-1", "vm-2"]
        assert fake.last.query == {}
        assert await rapi.get_instances(bulk=True) == [{"name": "vm-1", "oper_state": True}]
        assert (fake.last.method, fake.last.path, fake.last.query) == (
            "GET",
            "/2/instances",
            {"bulk": ["1"]},
        )


async def test_get_instance() -> None:
    fake = FakeRapi(ok({"name": "snf-1", "admin_state": "up"}))
    async with client_for(fake) as rapi:
        assert (await rapi.get_instance("snf-1"))["admin_state"] == "up"
    assert (fake.last.method, fake.last.path, fake.last.body) == ("GET", "/2/instances/snf-1", None)


@pytest.mark.parametrize(("static", "flag"), [(False, "0"), (True, "1")])
async def test_get_instance_info_is_a_job(static: bool, flag: str) -> None:
    fake = FakeRapi(ok(26))
    async with client_for(fake) as rapi:
        assert await rapi.get_instance_info("snf-1", static=static) == 26
    assert (fake.last.method, fake.last.path, fake.last.query) == (
        "GET",
        "/2/instances/snf-1/info",
        {"static": [flag]},
    )


async def test_create_instance_body_and_caller_dict_untouched() -> None:
    body = {
        "mode": "create",
        "name": "snf-7",
        "disk_template": "file",
        "disks": [{"size": 1024}],
        "nics": [{"network": "snf-net-1", "ip": "pool"}],
        "beparams": {"vcpus": 1, "memory": 128},
        "ip_check": False,
    }
    original = json.loads(json.dumps(body))
    fake = FakeRapi(ok(22))
    async with client_for(fake) as rapi:
        assert await rapi.create_instance(body) == 22
    seen = fake.last
    assert (seen.method, seen.path, seen.query) == ("POST", "/2/instances", {})
    assert seen.body == {"__version__": 1, **original}
    assert seen.headers["content-type"] == "application/json"
    assert body == original


async def test_create_instance_dry_run_goes_to_the_query() -> None:
    fake = FakeRapi(ok(23), ok(24))
    body = {"mode": "create", "name": "snf-8", "disks": [], "nics": [], "dry_run": True}
    async with client_for(fake) as rapi:
        assert await rapi.create_instance({"mode": "create", "name": "x"}, dry_run=True) == 23
        assert fake.last.query == {"dry-run": ["1"]}
        assert await rapi.create_instance(body, reason="api") == 24
    assert fake.last.query == {"dry-run": ["1"], "reason": ["api"]}
    assert "dry_run" not in fake.last.body
    assert body["dry_run"] is True


async def test_create_instance_accepts_string_job_id_from_old_servers() -> None:
    fake = FakeRapi(ok("12345"))
    async with client_for(fake) as rapi:
        assert await rapi.create_instance({"mode": "create"}) == 12345


async def test_delete_instance() -> None:
    fake = FakeRapi(ok(37), ok(38))
    async with client_for(fake) as rapi:
        assert await rapi.delete_instance("snf-1") == 37
        assert (fake.last.method, fake.last.path, fake.last.query, fake.last.content) == (
            "DELETE",
            "/2/instances/snf-1",
            {},
            b"",
        )
        assert await rapi.delete_instance("snf-1", dry_run=True, shutdown_timeout=0) == 38
    assert fake.last.query == {"dry-run": ["1"]}
    assert fake.last.body == {"shutdown_timeout": 0}
    assert fake.last.headers["content-type"] == "application/json"


async def test_delete_instance_shutdown_timeout_left_out_before_2_10() -> None:
    fake = FakeRapi(ok(5), version="2.9.7")
    async with client_for(fake) as rapi:
        assert await rapi.delete_instance("snf-1", shutdown_timeout=0) == 5
    assert fake.last.content == b""


async def test_reboot_instance_is_a_post_with_the_type_in_the_query() -> None:
    fake = FakeRapi(ok(25), ok(6146))
    async with client_for(fake) as rapi:
        assert await rapi.reboot_instance("snf-1", "soft") == 25
        assert (fake.last.method, fake.last.path, fake.last.query, fake.last.content) == (
            "POST",
            "/2/instances/snf-1/reboot",
            {"type": ["soft"]},
            b"",
        )
        job = await rapi.reboot_instance(
            "snf-1", "hard", ignore_secondaries=True, dry_run=True, shutdown_timeout=0
        )
    assert job == 6146
    assert fake.last.query == {"type": ["hard"], "ignore_secondaries": ["1"], "dry-run": ["1"]}
    assert fake.last.body == {"shutdown_timeout": 0}


async def test_startup_instance() -> None:
    fake = FakeRapi(ok(24), ok(27149))
    async with client_for(fake) as rapi:
        assert await rapi.startup_instance("snf-1") == 24
        assert (fake.last.method, fake.last.path, fake.last.query, fake.last.content) == (
            "PUT",
            "/2/instances/snf-1/startup",
            {},
            b"",
        )
        assert await rapi.startup_instance("snf-1", dry_run=True, reason="New") == 27149
    assert fake.last.query == {"dry-run": ["1"], "reason": ["New"]}


async def test_shutdown_instance_timeout_goes_in_the_body() -> None:
    fake = FakeRapi(ok(23), ok(1487))
    async with client_for(fake) as rapi:
        assert await rapi.shutdown_instance("snf-1") == 23
        assert (fake.last.method, fake.last.path, fake.last.content) == (
            "PUT",
            "/2/instances/snf-1/shutdown",
            b"",
        )
        assert await rapi.shutdown_instance("snf-1", timeout=30, dry_run=True) == 1487
    assert fake.last.body == {"timeout": 30}
    assert fake.last.query == {"dry-run": ["1"]}


async def test_get_instance_console() -> None:
    console = {"instance": "snf-1", "kind": "vnc", "host": "node1", "port": 11000, "display": 5100}
    fake = FakeRapi(ok(console))
    async with client_for(fake) as rapi:
        assert await rapi.get_instance_console("snf-1") == console
    assert (fake.last.method, fake.last.path) == ("GET", "/2/instances/snf-1/console")


async def test_modify_instance_body_is_exactly_the_parameters() -> None:
    fake = FakeRapi(ok(31), ok(32))
    async with client_for(fake) as rapi:
        assert await rapi.modify_instance("snf-1", os_name="noop") == 31
        assert (fake.last.method, fake.last.path, fake.last.query, fake.last.body) == (
            "PUT",
            "/2/instances/snf-1/modify",
            {},
            {"os_name": "noop"},
        )
        nics = [("add", -1, {"network": "snf-net-1", "ip": "pool", "name": "nic-1"})]
        job = await rapi.modify_instance(
            "snf-1", nics=nics, depends=[[30, ["success"]]], dry_run=True, reason="attach"
        )
    assert job == 32
    assert fake.last.body == {
        "nics": [["add", -1, {"network": "snf-net-1", "ip": "pool", "name": "nic-1"}]],
        "depends": [[30, ["success"]]],
        "dry_run": True,
    }
    assert fake.last.query == {"reason": ["attach"]}
    assert fake.info_calls == 0  # nothing version-dependent was asked


@pytest.mark.parametrize(
    ("version", "given", "sent"),
    [
        ("3.0.2", {"hotplug_if_possible": True}, {"hotplug_if_possible": True}),
        ("3.0.2", {"hotplug": True}, {"hotplug": True}),
        ("3.1.0", {"hotplug_if_possible": True}, {"hotplug": True}),
        ("3.1.0", {"hotplug_if_possible": False}, {"hotplug": False}),
        ("3.1.0", {"hotplug": False, "hotplug_if_possible": True}, {"hotplug": True}),
        ("2.9.7", {"hotplug_if_possible": True}, {}),
        ("2.9.7", {"hotplug": False}, {}),
    ],
)
async def test_modify_instance_hotplug_per_version(
    version: str, given: dict[str, Any], sent: dict[str, bool]
) -> None:
    fake = FakeRapi(ok(1), version=version)
    async with client_for(fake) as rapi:
        await rapi.modify_instance("snf-1", nics=[["remove", "nic-1", {}]], **given)
    assert fake.last.body == {"nics": [["remove", "nic-1", {}]], **sent}


async def test_modify_instance_hotplug_unsupported_before_2_10() -> None:
    fake = FakeRapi(version="2.9.7")
    async with client_for(fake) as rapi:
        with pytest.raises(RapiUnsupported, match="hotplug"):
            await rapi.modify_instance("snf-1", hotplug=True)
    assert fake.seen == []


async def test_instance_tags() -> None:
    fake = FakeRapi(ok(["env:test"]), ok(27), ok(28))
    async with client_for(fake) as rapi:
        assert await rapi.get_instance_tags("snf-1") == ["env:test"]
        assert (fake.last.method, fake.last.path) == ("GET", "/2/instances/snf-1/tags")
        assert await rapi.add_instance_tags("snf-1", ["env:test", "owner:alice"]) == 27
        assert (fake.last.method, fake.last.path, fake.last.query, fake.last.content) == (
            "PUT",
            "/2/instances/snf-1/tags",
            {"tag": ["env:test", "owner:alice"]},
            b"",
        )
        assert await rapi.delete_instance_tags("snf-1", ["a", "b"], dry_run=True) == 28
    assert (fake.last.method, fake.last.path, fake.last.query) == (
        "DELETE",
        "/2/instances/snf-1/tags",
        {"tag": ["a", "b"], "dry-run": ["1"]},
    )


async def test_tags_must_be_a_non_empty_collection() -> None:
    fake = FakeRapi()
    async with client_for(fake) as rapi:
        with pytest.raises(TypeError):
            await rapi.add_instance_tags("snf-1", "env:test")
        with pytest.raises(ValueError):
            await rapi.delete_instance_tags("snf-1", [])
    assert fake.seen == []


# -- nodes, groups ----------------------------------------------------------------------------


async def test_nodes() -> None:
    fake = FakeRapi(
        ok([{"id": "node1", "uri": "/2/nodes/node1"}]),
        ok([{"name": "node1", "mfree": 22856, "cnodes": None}]),
        ok({"name": "node1", "role": "M"}),
    )
    async with client_for(fake) as rapi:
        assert await rapi.get_nodes() == ["node1"]
        assert (fake.last.path, fake.last.query) == ("/2/nodes", {})
        assert (await rapi.get_nodes(bulk=True))[0]["mfree"] == 22856
        assert fake.last.query == {"bulk": ["1"]}
        assert (await rapi.get_node("node1"))["role"] == "M"
        assert (fake.last.method, fake.last.path) == ("GET", "/2/nodes/node1")


async def test_groups_list_by_name() -> None:
    fake = FakeRapi(
        ok([{"name": "default", "uri": "/2/groups/default"}]),
        ok([{"name": "default", "node_cnt": 1}]),
        ok({"name": "default", "alloc_policy": "preferred"}),
    )
    async with client_for(fake) as rapi:
        assert await rapi.get_groups() == ["default"]
        assert await rapi.get_groups(bulk=True) == [{"name": "default", "node_cnt": 1}]
        assert fake.last.query == {"bulk": ["1"]}
        assert (await rapi.get_group("default"))["alloc_policy"] == "preferred"
        assert fake.last.path == "/2/groups/default"


# -- networks ---------------------------------------------------------------------------------


async def test_get_networks_and_network() -> None:
    fake = FakeRapi(
        ok([{"name": "snf-net-1", "uri": "/2/networks/snf-net-1"}]),
        ok([{"name": "snf-net-1", "free_count": 253}]),
        ok({"name": "snf-net-1", "group_list": [["default", "bridged", "br0", ""]]}),
    )
    async with client_for(fake) as rapi:
        assert await rapi.get_networks() == ["snf-net-1"]
        assert (await rapi.get_networks(bulk=True))[0]["free_count"] == 253
        assert fake.last.query == {"bulk": ["1"]}
        network = await rapi.get_network("snf-net-1")
    assert network["group_list"] == [["default", "bridged", "br0", ""]]
    assert (fake.last.method, fake.last.path) == ("GET", "/2/networks/snf-net-1")


async def test_create_network_minimal_body_leaves_unset_keys_out() -> None:
    fake = FakeRapi(ok(29))
    async with client_for(fake) as rapi:
        assert await rapi.create_network("snf-net-1", "10.77.5.0/24") == 29
    assert (fake.last.method, fake.last.path, fake.last.query) == ("POST", "/2/networks", {})
    assert fake.last.body == {"network_name": "snf-net-1", "network": "10.77.5.0/24"}


async def test_create_network_full_body() -> None:
    fake = FakeRapi(ok(29))
    async with client_for(fake) as rapi:
        job = await rapi.create_network(
            "snf-net-1",
            "10.77.5.0/24",
            gateway="10.77.5.1",
            network6="2001:db8::/64",
            gateway6="2001:db8::1",
            mac_prefix="aa:00:01",
            add_reserved_ips=("10.77.5.2",),
            tags=("nfdhcpd",),
            conflicts_check=False,
            depends=[(28, ("success", "error", "canceled"))],
            dry_run=True,
        )
    assert job == 29
    assert fake.last.query == {"dry-run": ["1"]}
    assert fake.last.body == {
        "network_name": "snf-net-1",
        "network": "10.77.5.0/24",
        "gateway": "10.77.5.1",
        "network6": "2001:db8::/64",
        "gateway6": "2001:db8::1",
        "mac_prefix": "aa:00:01",
        "add_reserved_ips": ["10.77.5.2"],
        "tags": ["nfdhcpd"],
        "conflicts_check": False,
        "depends": [[28, ["success", "error", "canceled"]]],
    }


async def test_connect_network() -> None:
    fake = FakeRapi(ok(30), ok(31))
    async with client_for(fake) as rapi:
        assert await rapi.connect_network("snf-net-1", "default", "bridged", "br0") == 30
        assert (fake.last.method, fake.last.path, fake.last.query) == (
            "PUT",
            "/2/networks/snf-net-1/connect",
            {},
        )
        assert fake.last.body == {
            "group_name": "default",
            "network_mode": "bridged",
            "network_link": "br0",
        }
        job = await rapi.connect_network(
            "snf-net-1",
            "default",
            "routed",
            "rt1",
            vlan="100",
            conflicts_check=True,
            depends=[(29, ["success"])],
            dry_run=True,
        )
    assert job == 31
    assert fake.last.query == {"dry-run": ["1"]}
    assert fake.last.body == {
        "group_name": "default",
        "network_mode": "routed",
        "network_link": "rt1",
        "network_vlan": "100",
        "conflicts_check": True,
        "depends": [[29, ["success"]]],
    }


async def test_connect_network_before_2_10_never_sends_a_vlan() -> None:
    fake = FakeRapi(ok(30), version="2.9.7")
    async with client_for(fake) as rapi:
        assert await rapi.connect_network("snf-net-1", "default", "bridged", "br0", vlan="") == 30
        assert "network_vlan" not in fake.last.body
        with pytest.raises(RapiUnsupported, match=r"2\.10"):
            await rapi.connect_network("snf-net-1", "default", "bridged", "br0", vlan="7")
        with pytest.raises(RapiUnsupported):
            await rapi.connect_network("snf-net-1", "default", "openvswitch", "sw0")
    assert len(fake.seen) == 1


async def test_disconnect_and_delete_network() -> None:
    fake = FakeRapi(ok(38), ok(39), ok(40))
    async with client_for(fake) as rapi:
        assert await rapi.disconnect_network("snf-net-1", "default", dry_run=True) == 38
        assert (fake.last.method, fake.last.path, fake.last.query, fake.last.body) == (
            "PUT",
            "/2/networks/snf-net-1/disconnect",
            {"dry-run": ["1"]},
            {"group_name": "default"},
        )
        assert await rapi.delete_network("snf-net-1") == 39
        assert (fake.last.method, fake.last.path, fake.last.content) == (
            "DELETE",
            "/2/networks/snf-net-1",
            b"",
        )
        assert await rapi.delete_network("snf-net-1", depends=[(38, ["success"])]) == 40
    assert fake.last.body == {"depends": [[38, ["success"]]]}


async def test_networks_on_a_release_without_them_raise_unsupported() -> None:
    fake = FakeRapi(version="2.6.2")
    async with client_for(fake) as rapi:
        for call in (
            rapi.get_networks(),
            rapi.get_network("snf-net-1"),
            rapi.create_network("snf-net-1", "10.0.0.0/24"),
            rapi.connect_network("snf-net-1", "default", "bridged", "br0"),
            rapi.disconnect_network("snf-net-1", "default"),
            rapi.delete_network("snf-net-1"),
        ):
            with pytest.raises(RapiUnsupported, match=r"2\.7"):
                await call
    assert fake.seen == []
    assert fake.info_calls == 1


# -- jobs -------------------------------------------------------------------------------------


async def test_get_jobs_ids_are_ints() -> None:
    fake = FakeRapi(
        ok([{"id": "123", "uri": "/2/jobs/123"}, {"id": 124, "uri": "/2/jobs/124"}]),
        ok([{"id": 124, "status": "success"}]),
    )
    async with client_for(fake) as rapi:
        assert await rapi.get_jobs() == [123, 124]
        assert (fake.last.path, fake.last.query) == ("/2/jobs", {})
        assert await rapi.get_jobs(bulk=True) == [{"id": 124, "status": "success"}]
    assert fake.last.query == {"bulk": ["1"]}


async def test_get_job_status_and_unknown_jobs() -> None:
    unknown = {"id": 999999, "ops": None, "status": None, "opresult": None}
    fake = FakeRapi(ok({"id": 22, "status": "success"}), ok(unknown), httpx.Response(404))
    async with client_for(fake) as rapi:
        assert (await rapi.get_job_status(22))["status"] == "success"
        assert (fake.last.method, fake.last.path) == ("GET", "/2/jobs/22")
        with pytest.raises(RapiNotFound, match="999999"):
            await rapi.get_job_status(999999)
        with pytest.raises(RapiNotFound):  # 2.10 and older
            await rapi.get_job_status(5)


async def test_wait_for_job_change_is_a_get_with_a_json_body() -> None:
    change = {"job_info": ["running"], "log_entries": [[1, [1, 2], "message", "hi"]]}
    fake = FakeRapi(ok(change), ok(None))
    async with client_for(fake) as rapi:
        assert await rapi.wait_for_job_change(22, ["status"], ["queued"], 0) == change
        seen = fake.last
        assert (seen.method, seen.path, seen.query) == ("GET", "/2/jobs/22/wait", {})
        assert seen.headers["content-type"] == "application/json"
        assert seen.body == {
            "fields": ["status"],
            "previous_job_info": ["queued"],
            "previous_log_serial": 0,
        }
        assert await rapi.wait_for_job_change(22, ("status", "opstatus"), None, None) is None
    assert fake.last.body == {
        "fields": ["status", "opstatus"],
        "previous_job_info": None,
        "previous_log_serial": None,
    }


async def test_cancel_job() -> None:
    fake = FakeRapi(
        ok([True, "Job successfully cancelled"]),
        ok([False, "Job no longer waiting, can't cancel (informed it anyway)"]),
    )
    async with client_for(fake) as rapi:
        assert await rapi.cancel_job(36) == (True, "Job successfully cancelled")
        assert (fake.last.method, fake.last.path, fake.last.content) == (
            "DELETE",
            "/2/jobs/36",
            b"",
        )
        canceled, _ = await rapi.cancel_job(35)
    assert canceled is False


@pytest.mark.parametrize("bad", [-1, True, "12", 1.5])
async def test_job_ids_are_validated(bad: Any) -> None:
    fake = FakeRapi()
    async with client_for(fake) as rapi:
        with pytest.raises(ValueError):
            await rapi.get_job_status(bad)
    assert fake.seen == []


# -- wait_for_job -----------------------------------------------------------------------------


def wait_reply(status: str | None, *serials: int) -> httpx.Response:
    entries = [[s, [1795894897, 0], "message", f"step {s}"] for s in serials]
    return ok({"job_info": [status], "log_entries": entries})


@pytest.mark.parametrize("final", ["success", "error", "canceled"])
async def test_wait_for_job_follows_the_job_to_its_end(final: str) -> None:
    status = {"id": 22, "status": final, "opstatus": [final], "opresult": [None]}
    fake = FakeRapi(
        wait_reply("queued"),
        wait_reply("running", 1, 2),
        wait_reply("running"),  # 3.0: unchanged after ~10 s
        wait_reply("running", 3),
        wait_reply(final, 4),
        ok(status),
    )
    async with client_for(fake) as rapi:
        assert await rapi.wait_for_job(22) == status
    waits = [s for s in fake.seen if s.path == "/2/jobs/22/wait"]
    assert all(s.method == "GET" for s in waits)
    assert [(s.body["previous_job_info"], s.body["previous_log_serial"]) for s in waits] == [
        (None, None),
        (["queued"], None),
        (["running"], 2),
        (["running"], 2),
        (["running"], 3),
    ]
    assert all(s.body["fields"] == ["status"] for s in waits)
    assert (fake.last.method, fake.last.path) == ("GET", "/2/jobs/22")


async def test_wait_for_job_null_reply_means_no_change() -> None:
    fake = FakeRapi(
        wait_reply("running", 1), ok(None), wait_reply("success"), ok({"status": "success"})
    )
    async with client_for(fake) as rapi:
        assert (await rapi.wait_for_job(7))["status"] == "success"
    assert fake.seen[2].body["previous_job_info"] == ["running"]
    assert fake.seen[2].body["previous_log_serial"] == 1


async def test_wait_for_job_canceling_is_not_final() -> None:
    fake = FakeRapi(
        wait_reply("canceling"), wait_reply("canceled"), ok({"status": "canceled", "id": 36})
    )
    async with client_for(fake) as rapi:
        assert (await rapi.wait_for_job(36))["status"] == "canceled"


async def test_wait_for_job_unknown_job_raises_not_found() -> None:
    fake = FakeRapi(wait_reply(None))
    async with client_for(fake) as rapi:
        with pytest.raises(RapiNotFound):
            await rapi.wait_for_job(999999)
    assert len(fake.seen) == 1


async def test_wait_for_job_lost_job_500_then_null_status() -> None:
    job_lost = httpx.Response(500, json={"code": 500, "message": "JobLost", "explain": "x"})
    fake = FakeRapi(job_lost, ok({"id": 9, "status": None}))
    async with client_for(fake) as rapi:
        with pytest.raises(RapiNotFound):
            await rapi.wait_for_job(9)
    assert [s.path for s in fake.seen] == ["/2/jobs/9/wait", "/2/jobs/9"]


async def test_wait_for_job_archived_while_waiting_returns_its_status() -> None:
    job_lost = httpx.Response(500, json={"code": 500, "message": "JobLost", "explain": "x"})
    fake = FakeRapi(wait_reply("running"), job_lost, ok({"id": 9, "status": "success"}))
    async with client_for(fake) as rapi:
        assert (await rapi.wait_for_job(9))["status"] == "success"


async def test_wait_for_job_other_500_is_raised() -> None:
    boom = httpx.Response(500, json={"code": 500, "message": "boom", "explain": "x"})
    fake = FakeRapi(boom, ok({"id": 9, "status": "running"}))
    async with client_for(fake) as rapi:
        with pytest.raises(RapiServerError, match="boom"):
            await rapi.wait_for_job(9)


async def test_wait_for_job_overall_timeout() -> None:
    never = asyncio.Event()
    calls = 0

    async def blocking(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        await never.wait()  # a server that never answers
        raise AssertionError("unreachable")

    async with RapiClient("c", transport=httpx.MockTransport(blocking)) as rapi:
        with pytest.raises(RapiTimeout, match="not finished"):
            await rapi.wait_for_job(22, timeout=0.05)
    assert calls == 1


async def test_wait_for_job_malformed_reply() -> None:
    fake = FakeRapi(ok({"job_info": "running"}))
    async with client_for(fake) as rapi:
        with pytest.raises(RapiResponseError):
            await rapi.wait_for_job(22)


# -- retries ----------------------------------------------------------------------------------


def bad_gateway() -> httpx.Response:
    return httpx.Response(
        502, json={"code": 502, "message": "Can&#x27;t connect to master daemon", "explain": "x"}
    )


async def test_get_retried_after_two_502s() -> None:
    fake = FakeRapi(bad_gateway(), bad_gateway(), ok([]))
    async with client_for(fake) as rapi:
        assert await rapi.get_instances() == []
    assert len(fake.seen) == 3


async def test_get_gives_up_after_max_attempts() -> None:
    fake = FakeRapi(*(bad_gateway() for _ in range(3)))
    async with client_for(fake) as rapi:
        with pytest.raises(RapiServerError) as caught:
            await rapi.get_instances()
    assert caught.value.status == 502
    assert caught.value.message == "Can't connect to master daemon"
    assert len(fake.seen) == 3


@pytest.mark.parametrize(
    "failure",
    [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.ConnectTimeout("slow")],
)
async def test_get_retried_after_transport_failures(failure: Exception) -> None:
    fake = FakeRapi(failure, ok(2))
    async with client_for(fake) as rapi:
        assert await rapi.get_version() == 2
    assert len(fake.seen) == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 500, 501])
async def test_get_not_retried_on_permanent_errors(status: int) -> None:
    fake = FakeRapi(httpx.Response(status), ok({}))
    async with client_for(fake) as rapi:
        with pytest.raises(RapiError) as caught:
            await rapi.get_instance("snf-1")
    assert caught.value.status == status
    assert not caught.value.transient
    assert len(fake.seen) == 1


@pytest.mark.parametrize(
    "failure",
    [bad_gateway, lambda: httpx.ReadTimeout("slow"), lambda: httpx.ConnectError("refused")],
)
async def test_job_submission_never_retried(failure: Callable[[], Reply]) -> None:
    fake = FakeRapi(failure(), failure(), ok(99))
    async with client_for(fake) as rapi:
        with pytest.raises(RapiError) as caught:
            await rapi.reboot_instance("snf-1", "hard")
        assert caught.value.transient
        with pytest.raises(RapiError):
            await rapi.get_instance_info("snf-1")  # a GET, but it submits a job
    assert len(fake.seen) == 2
    assert [s.method for s in fake.seen] == ["POST", "GET"]


async def test_retry_backs_off_exponentially(monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[float] = []

    async def fake_sleep(delay: float) -> None:
        delays.append(delay)

    monkeypatch.setattr("dispatcher.rapi._http.asyncio.sleep", fake_sleep)
    fake = FakeRapi(bad_gateway(), bad_gateway(), ok(2))
    async with client_for(fake, backoff=0.5) as rapi:
        assert await rapi.get_version() == 2
    assert delays == [0.5, 1.0]


async def test_long_calls_get_longer_read_timeouts() -> None:
    fake = FakeRapi(ok([]), ok(None), ok([True, "ok"]), ok([]))
    async with client_for(fake, timeout=5.0) as rapi:
        await rapi.get_nodes(bulk=True)
        await rapi.wait_for_job_change(1, ["status"], None, None)
        await rapi.cancel_job(1)
        await rapi.get_nodes()
    reads = [s.timeout["read"] for s in fake.seen]
    assert reads == [90.0, 25.0, 60.0, 5.0]
    assert all(s.timeout["connect"] == 5.0 for s in fake.seen)


# -- client construction, auth, headers, metrics, logging -------------------------------------


async def test_basic_auth_and_headers() -> None:
    fake = FakeRapi(ok(2))
    async with client_for(fake) as rapi:
        await rapi.get_version()
    token = base64.b64encode(f"dispatcher:{PASSWORD}".encode()).decode()
    assert fake.last.headers["authorization"] == f"Basic {token}"
    assert fake.last.headers["accept"] == "application/json"
    assert "content-type" not in fake.last.headers


async def test_anonymous_client_sends_no_authorization() -> None:
    fake = FakeRapi(ok(2))
    async with RapiClient("c", transport=httpx.MockTransport(fake)) as rapi:
        await rapi.get_version()
    assert "authorization" not in fake.last.headers


def test_constructor_validation() -> None:
    with pytest.raises(ValueError):
        RapiClient("c", username="u")
    with pytest.raises(ValueError):
        RapiClient("c", password="p")
    with pytest.raises(ValueError):
        RapiClient("c", ca_pem="-----BEGIN CERTIFICATE-----", insecure=True)


def test_repr_and_vars_hide_the_password() -> None:
    rapi = RapiClient("c", 5080, "u", PASSWORD)
    assert PASSWORD not in repr(rapi)
    assert PASSWORD not in repr(vars(rapi))
    assert PASSWORD not in repr(vars(rapi._http))


@dataclass
class BackendRow:
    host: str = "2001:db8::5"
    port: int = 15080
    username: str | None = "dispatcher"
    password: str | None = PASSWORD
    ca_pem: str | None = None
    insecure: bool = True


async def test_from_backend() -> None:
    fake = FakeRapi(ok(2))
    rapi = RapiClient.from_backend(BackendRow(), transport=httpx.MockTransport(fake))
    assert rapi.base_url == "https://[2001:db8::5]:15080"
    assert PASSWORD not in repr(rapi)
    assert "insecure" in repr(rapi)
    async with rapi:
        assert await rapi.get_version() == 2
    assert str(fake.last.headers["authorization"]).startswith("Basic ")


@pytest.mark.parametrize("bad", ["", "a/b", "../x", "snf 1", "snf%2F1", "vm?x=1", "ü"])
async def test_names_are_validated_before_sending(bad: str) -> None:
    fake = FakeRapi()
    async with client_for(fake) as rapi:
        with pytest.raises(ValueError):
            await rapi.get_instance(bad)
    assert fake.seen == []


async def test_closed_client_refuses_calls() -> None:
    rapi = client_for(FakeRapi(ok(2)))
    async with rapi:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        await rapi.get_version()


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_metrics_per_request() -> None:
    before_ok = sample("dispatcher_rapi_requests_total", operation="GetNode", outcome="ok")
    before_err = sample(
        "dispatcher_rapi_requests_total", operation="GetNode", outcome="RapiServerError"
    )
    before_n = sample("dispatcher_rapi_request_seconds_count", operation="GetNode")
    fake = FakeRapi(bad_gateway(), ok({"name": "node1"}))
    async with client_for(fake) as rapi:
        await rapi.get_node("node1")
    assert sample("dispatcher_rapi_requests_total", operation="GetNode", outcome="ok") == (
        before_ok + 1
    )
    assert sample(
        "dispatcher_rapi_requests_total", operation="GetNode", outcome="RapiServerError"
    ) == (before_err + 1)
    assert sample("dispatcher_rapi_request_seconds_count", operation="GetNode") == before_n + 2


async def test_debug_log_line_per_request(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="dispatcher.rapi")
    fake = FakeRapi(ok({"name": "snf-1"}))
    async with client_for(fake) as rapi:
        await rapi.get_instance("snf-1")
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("dispatcher.rapi")]
    assert any("GET /2/instances/snf-1" in line and "200" in line for line in lines)
    assert all(PASSWORD not in line for line in lines)


async def test_unexpected_shapes_are_response_errors() -> None:
    fake = FakeRapi(
        ok({"not": "a list"}),
        ok([{"uri": "/2/instances/x"}]),
        ok("not-a-job"),
        ok([1, 2, 3]),
        ok(True),
    )
    async with client_for(fake) as rapi:
        with pytest.raises(RapiResponseError):
            await rapi.get_instances()
        with pytest.raises(RapiResponseError):
            await rapi.get_instances()
        with pytest.raises(RapiResponseError):
            await rapi.startup_instance("snf-1")
        with pytest.raises(RapiResponseError):
            await rapi.cancel_job(1)
        with pytest.raises(RapiResponseError):
            await rapi.get_version()
