"""Async client for the Ganeti Remote API v2 (Ganeti 2.6 to 3.1).

Each method is one RAPI call. Calls that change something return the Ganeti job id at once;
the outcome is read from the job (:meth:`RapiClient.wait_for_job`). Reads are retried on
transient failures; job submissions never are, since a request that timed out may still have
created its job.

Version-dependent requests (``/2/info`` ``software_version``, fetched once per client) never
carry a key the cluster's release would refuse: see the notes on each method.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Literal, Protocol, Self, TypeVar, overload

import httpx

from dispatcher.rapi._http import Query, RapiHttp, Secret, UnexpectedShape
from dispatcher.rapi.errors import (
    RapiNotFound,
    RapiResponseError,
    RapiServerError,
    RapiTimeout,
    RapiUnsupported,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

JSONDict = dict[str, Any]
SoftwareVersion = tuple[int, int, int]
RebootType = Literal["soft", "hard", "full"]
JobStatus = Literal["queued", "waiting", "canceling", "running", "success", "error", "canceled"]
FinalStatus = Literal["success", "error", "canceled"]
# [[job_id, [final statuses]]]: run after those jobs ended in one of the listed statuses.
Depends = Sequence[tuple[int, Sequence[FinalStatus]]]

FINAL_STATUSES: frozenset[str] = frozenset({"success", "error", "canceled"})
DEFAULT_PORT = 5080

# Releases that changed what a request may contain (ganeti-rapi.md §6).
NETWORKS_SINCE: SoftwareVersion = (2, 7, 0)
BODY_ON_DELETE_REBOOT_SINCE: SoftwareVersion = (2, 10, 0)
HOTPLUG_SINCE: SoftwareVersion = (2, 10, 0)
NETWORK_VLAN_SINCE: SoftwareVersion = (2, 10, 0)
HOTPLUG_IF_POSSIBLE_UNTIL: SoftwareVersion = (3, 1, 0)

# The server blocks a /wait for up to 10 s, and bulk listings make live RPCs to every node.
WAIT_TIMEOUT_FLOOR = 25.0
BULK_TIMEOUT_FLOOR = 90.0
# Canceling a waiting job blocks until the job process reacts: up to 44 s in luxid
# (luxiCancelJobTimeout); 6 s was seen on the sandbox.
CANCEL_TIMEOUT_FLOOR = 60.0

# The server matches names with [\w._-]+ on the raw path and never URL-decodes: anything else
# would come back as a 404 that looks like "no such object".
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+\Z")
_VERSION_RE = re.compile(r"\s*(\d+)\.(\d+)(?:\.(\d+))?")


class BackendLike(Protocol):
    """What :meth:`RapiClient.from_backend` reads (``dispatcher.db.models.Backend`` fits)."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def username(self) -> str | None: ...
    @property
    def password(self) -> str | None: ...
    @property
    def ca_pem(self) -> str | None: ...
    @property
    def insecure(self) -> bool: ...


def parse_software_version(text: object) -> SoftwareVersion:
    """``"2.16.0~rc1"`` -> ``(2, 16, 0)``; ``"3.0"`` -> ``(3, 0, 0)``."""
    match = _VERSION_RE.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"not a Ganeti release string: {text!r}")
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def _fmt(version: SoftwareVersion) -> str:
    return ".".join(map(str, version))


def _name(value: str, what: str = "name") -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ValueError(f"invalid Ganeti {what}: {value!r}")
    return value


def _job_path(job_id: int) -> str:
    if isinstance(job_id, bool) or not isinstance(job_id, int) or job_id < 0:
        raise ValueError(f"invalid job id: {job_id!r}")
    return f"/2/jobs/{job_id}"


def _tag_query(tags: Iterable[str]) -> list[tuple[str, str]]:
    if isinstance(tags, str):
        raise TypeError("tags must be a collection of strings, not one string")
    query = [("tag", tag) for tag in tags]
    if not query:
        raise ValueError("no tags given")
    return query


def _depends(depends: Depends) -> list[list[Any]]:
    return [[job_id, list(statuses)] for job_id, statuses in depends]


# Response parsers: each checks the documented shape and raises UnexpectedShape otherwise.


def _any(value: Any) -> Any:
    return value


def _dict(value: Any) -> JSONDict:
    if not isinstance(value, dict):
        raise UnexpectedShape(f"expected an object, got {type(value).__name__}")
    return value


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise UnexpectedShape(f"expected a list, got {type(value).__name__}")
    return value


def _dicts(value: Any) -> list[JSONDict]:
    return [_dict(item) for item in _list(value)]


def _strings(value: Any) -> list[str]:
    items = _list(value)
    if not all(isinstance(item, str) for item in items):
        raise UnexpectedShape("expected a list of strings")
    return items


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UnexpectedShape(f"expected an integer, got {value!r:.80}")
    return value


def _job_id(value: Any) -> int:
    # 2.5/2.6 send job ids as JSON strings, 2.7+ as numbers.
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return _int(value)


def _job_ids(value: Any) -> list[int]:
    return [_job_id(item.get("id")) for item in _dicts(value)]


def _field(key: str) -> Callable[[Any], list[str]]:
    def parse(value: Any) -> list[str]:
        names: list[str] = []
        for item in _dicts(value):
            name = item.get(key)
            if not isinstance(name, str):
                raise UnexpectedShape(f"expected a {key!r} string in every item")
            names.append(name)
        return names

    return parse


def _cancel_result(value: Any) -> tuple[bool, str]:
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], bool)):
        raise UnexpectedShape(f"expected [bool, message], got {value!r:.80}")
    return value[0], str(value[1])


def _wait_result(value: Any) -> JSONDict | None:
    if value is None:  # Ganeti <= 2.10: nothing changed within the server's timeout
        return None
    result = _dict(value)
    _list(result.get("job_info"))
    for entry in _list(result.get("log_entries")):
        if not (isinstance(entry, list) and entry and isinstance(entry[0], int)):
            raise UnexpectedShape(f"malformed log entry: {entry!r:.80}")
    return result


def _adapt_hotplug(params: JSONDict, version: SoftwareVersion) -> JSONDict:
    """Translate ``hotplug``/``hotplug_if_possible`` to what ``version`` accepts.

    2.10-3.0 have both (``hotplug``: hotplug or fail; ``hotplug_if_possible``: hotplug or apply
    at the next restart). 3.1 dropped the latter (400) and made ``hotplug`` mean "if possible".
    Before 2.10 neither exists: changes always apply at the next restart.
    """
    params = dict(params)
    if version >= HOTPLUG_IF_POSSIBLE_UNTIL:
        if "hotplug_if_possible" in params:
            if_possible = bool(params.pop("hotplug_if_possible"))
            params["hotplug"] = bool(params.get("hotplug", False)) or if_possible
    elif version < HOTPLUG_SINCE:
        params.pop("hotplug_if_possible", None)
        if params.pop("hotplug", False):
            raise RapiUnsupported(
                f"hotplug needs Ganeti >= {_fmt(HOTPLUG_SINCE)}, the cluster runs {_fmt(version)}"
            )
    return params


class RapiClient:
    """Async client for one Ganeti cluster's RAPI. Use as ``async with RapiClient(...) as c``.

    TLS: the system CAs by default; with ``ca_pem`` only that certificate is trusted and the
    hostname is not checked; ``insecure=True`` turns verification off.
    """

    def __init__(
        self,
        host: str,
        port: int = DEFAULT_PORT,
        username: str | None = None,
        password: str | None = None,
        *,
        ca_pem: str | None = None,
        insecure: bool = False,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        max_attempts: int = 3,
        backoff: float = 0.5,
    ) -> None:
        if (username is None) != (password is None):
            raise ValueError("give both a RAPI username and a password, or neither")
        if ca_pem is not None and insecure:
            raise ValueError("a pinned CA certificate and insecure=True contradict each other")
        self.host = host
        self.port = port
        self.username = username
        self._tls = "insecure" if insecure else "pinned" if ca_pem is not None else "system"
        self._http = RapiHttp(
            base_url=f"https://{_url_host(host)}:{port}",
            username=username,
            password=Secret(password) if password is not None else None,
            ca_pem=ca_pem,
            insecure=insecure,
            timeout=timeout,
            transport=transport,
            max_attempts=max_attempts,
            backoff=backoff,
        )
        self._version: SoftwareVersion | None = None
        self._version_lock = asyncio.Lock()

    @classmethod
    def from_backend(cls, backend: BackendLike, **kwargs: Any) -> Self:
        """A client for a backend row; ``kwargs`` (timeout, transport, ...) pass through."""
        return cls(
            backend.host,
            backend.port,
            backend.username,
            backend.password,
            ca_pem=backend.ca_pem,
            insecure=backend.insecure,
            **kwargs,
        )

    def __repr__(self) -> str:
        return (
            f"RapiClient(host={self.host!r}, port={self.port}, "
            f"username={self.username!r}, tls={self._tls!r})"
        )

    @property
    def base_url(self) -> str:
        return self._http.base_url

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- discovery ------------------------------------------------------------------------

    async def get_version(self) -> int:
        """The RAPI protocol version (always 2); not the release: see get_software_version."""
        return await self._read("GetVersion", "/version", _int)

    async def get_info(self) -> JSONDict:
        info = await self._read("GetInfo", "/2/info", _dict)
        try:
            self._version = parse_software_version(info.get("software_version"))
        except ValueError:
            log.warning("RAPI %s: unusable software_version in /2/info", self.host)
        return info

    async def get_features(self) -> list[str]:
        try:
            return await self._read("GetFeatures", "/2/features", _strings)
        except RapiNotFound:  # before 2.2 the resource did not exist
            return []

    async def get_software_version(self) -> SoftwareVersion:
        """The cluster's Ganeti release as ``(major, minor, patch)``, fetched once."""
        if self._version is None:
            async with self._version_lock:
                if self._version is None:
                    await self.get_info()
        if self._version is None:
            raise RapiResponseError(
                "/2/info has no usable software_version", method="GET", path="/2/info"
            )
        return self._version

    async def _require(self, minimum: SoftwareVersion, what: str) -> SoftwareVersion:
        version = await self.get_software_version()
        if version < minimum:
            raise RapiUnsupported(
                f"{what} needs Ganeti >= {_fmt(minimum)}, {self.host} runs {_fmt(version)}"
            )
        return version

    # -- instances ------------------------------------------------------------------------

    @overload
    async def get_instances(self, bulk: Literal[False] = False) -> list[str]: ...
    @overload
    async def get_instances(self, bulk: Literal[True]) -> list[JSONDict]: ...
    @overload
    async def get_instances(self, bulk: bool) -> list[str] | list[JSONDict]: ...
    async def get_instances(self, bulk: bool = False) -> list[str] | list[JSONDict]:
        """Instance names, or with ``bulk`` every instance's fields (slow: live node RPCs)."""
        return await self._listing("GetInstances", "/2/instances", bulk, "id")

    async def get_instance(self, name: str) -> JSONDict:
        return await self._read("GetInstance", f"/2/instances/{_name(name)}", _dict)

    async def get_instance_info(self, name: str, static: bool = False) -> int:
        """Submits a query job (the data is in the job's ``opresult[0]``); returns its id."""
        return await self._http.call(
            "GetInstanceInfo",
            "GET",
            f"/2/instances/{_name(name)}/info",
            _job_id,
            query=[("static", static)],
        )

    async def create_instance(
        self, body: JSONDict, *, dry_run: bool = False, reason: str | None = None
    ) -> int:
        """``POST /2/instances`` with the caller's complete body (request format version 1).

        The caller's dict is not modified. A ``dry_run`` key is moved to the query, where
        Ganeti wants it (in the body it is refused as a static parameter).
        """
        data = dict(body)
        dry_run = bool(data.pop("dry_run", False)) or dry_run
        data["__version__"] = 1
        return await self._submit(
            "CreateInstance",
            "POST",
            "/2/instances",
            query=[("dry-run", dry_run or None), ("reason", reason)],
            body=data,
        )

    async def delete_instance(
        self,
        name: str,
        *,
        dry_run: bool = False,
        shutdown_timeout: int | None = None,
        reason: str | None = None,
    ) -> int:
        """``shutdown_timeout`` is honoured from Ganeti 2.10; older releases use their 120 s."""
        body = await self._shutdown_timeout_body("DeleteInstance", shutdown_timeout)
        return await self._submit(
            "DeleteInstance",
            "DELETE",
            f"/2/instances/{_name(name)}",
            query=[("dry-run", dry_run or None), ("reason", reason)],
            body=body,
        )

    async def reboot_instance(
        self,
        name: str,
        reboot_type: RebootType = "hard",
        ignore_secondaries: bool | None = None,
        dry_run: bool = False,
        *,
        shutdown_timeout: int | None = None,
        reason: str | None = None,
    ) -> int:
        """``type`` is always sent: without it the server does a hard reboot."""
        body = await self._shutdown_timeout_body("RebootInstance", shutdown_timeout)
        return await self._submit(
            "RebootInstance",
            "POST",
            f"/2/instances/{_name(name)}/reboot",
            query=[
                ("type", reboot_type),
                ("ignore_secondaries", ignore_secondaries),
                ("dry-run", dry_run or None),
                ("reason", reason),
            ],
            body=body,
        )

    async def _shutdown_timeout_body(
        self, operation: str, shutdown_timeout: int | None
    ) -> JSONDict | None:
        if shutdown_timeout is None:
            return None
        version = await self.get_software_version()
        if version < BODY_ON_DELETE_REBOOT_SINCE:
            # The handler ignores its body before 2.10: the default timeout applies either way.
            log.debug("%s: shutdown_timeout not supported by Ganeti %s", operation, _fmt(version))
            return None
        return {"shutdown_timeout": shutdown_timeout}

    async def startup_instance(
        self, name: str, dry_run: bool = False, *, reason: str | None = None
    ) -> int:
        return await self._submit(
            "StartupInstance",
            "PUT",
            f"/2/instances/{_name(name)}/startup",
            query=[("dry-run", dry_run or None), ("reason", reason)],
        )

    async def shutdown_instance(
        self,
        name: str,
        timeout: int | None = None,  # noqa: ASYNC109 -- Ganeti's shutdown timeout, sent as is
        dry_run: bool = False,
        *,
        reason: str | None = None,
    ) -> int:
        """``timeout`` (seconds before a forced stop) goes in the body, as ``timeout``."""
        return await self._submit(
            "ShutdownInstance",
            "PUT",
            f"/2/instances/{_name(name)}/shutdown",
            query=[("dry-run", dry_run or None), ("reason", reason)],
            body={"timeout": timeout} if timeout is not None else None,
        )

    async def get_instance_console(self, name: str) -> JSONDict:
        """Needs an authenticated user; 503 (RapiServerError) when the instance is down."""
        return await self._read("GetInstanceConsole", f"/2/instances/{_name(name)}/console", _dict)

    async def modify_instance(self, name: str, *, reason: str | None = None, **params: Any) -> int:
        """``PUT .../modify`` with ``params`` as the body (``nics``, ``beparams``, ``dry_run``...).

        ``hotplug``/``hotplug_if_possible`` are translated to what the release accepts (3.1
        dropped the latter; before 2.10 neither exists).
        """
        if "hotplug" in params or "hotplug_if_possible" in params:
            params = _adapt_hotplug(params, await self.get_software_version())
        return await self._submit(
            "ModifyInstance",
            "PUT",
            f"/2/instances/{_name(name)}/modify",
            query=[("reason", reason)],
            body=params,
        )

    async def get_instance_tags(self, name: str) -> list[str]:
        return await self._read("GetInstanceTags", f"/2/instances/{_name(name)}/tags", _strings)

    async def add_instance_tags(
        self, name: str, tags: Iterable[str], dry_run: bool = False, *, reason: str | None = None
    ) -> int:
        """Tags are validated inside the job: a bad tag still yields a job id, which fails."""
        return await self._submit(
            "AddInstanceTags",
            "PUT",
            f"/2/instances/{_name(name)}/tags",
            query=[*_tag_query(tags), ("dry-run", dry_run or None), ("reason", reason)],
        )

    async def delete_instance_tags(
        self, name: str, tags: Iterable[str], dry_run: bool = False, *, reason: str | None = None
    ) -> int:
        return await self._submit(
            "DeleteInstanceTags",
            "DELETE",
            f"/2/instances/{_name(name)}/tags",
            query=[*_tag_query(tags), ("dry-run", dry_run or None), ("reason", reason)],
        )

    # -- nodes and groups -----------------------------------------------------------------

    @overload
    async def get_nodes(self, bulk: Literal[False] = False) -> list[str]: ...
    @overload
    async def get_nodes(self, bulk: Literal[True]) -> list[JSONDict]: ...
    @overload
    async def get_nodes(self, bulk: bool) -> list[str] | list[JSONDict]: ...
    async def get_nodes(self, bulk: bool = False) -> list[str] | list[JSONDict]:
        return await self._listing("GetNodes", "/2/nodes", bulk, "id")

    async def get_node(self, name: str) -> JSONDict:
        return await self._read("GetNode", f"/2/nodes/{_name(name)}", _dict)

    @overload
    async def get_groups(self, bulk: Literal[False] = False) -> list[str]: ...
    @overload
    async def get_groups(self, bulk: Literal[True]) -> list[JSONDict]: ...
    @overload
    async def get_groups(self, bulk: bool) -> list[str] | list[JSONDict]: ...
    async def get_groups(self, bulk: bool = False) -> list[str] | list[JSONDict]:
        return await self._listing("GetGroups", "/2/groups", bulk, "name")

    async def get_group(self, name: str) -> JSONDict:
        return await self._read("GetGroup", f"/2/groups/{_name(name)}", _dict)

    # -- networks (Ganeti 2.7+; on older releases /2/networks is a 404 that would read as
    # "no such network", so these raise RapiUnsupported instead) --------------------------

    @overload
    async def get_networks(self, bulk: Literal[False] = False) -> list[str]: ...
    @overload
    async def get_networks(self, bulk: Literal[True]) -> list[JSONDict]: ...
    @overload
    async def get_networks(self, bulk: bool) -> list[str] | list[JSONDict]: ...
    async def get_networks(self, bulk: bool = False) -> list[str] | list[JSONDict]:
        await self._require(NETWORKS_SINCE, "networks")
        return await self._listing("GetNetworks", "/2/networks", bulk, "name")

    async def get_network(self, name: str) -> JSONDict:
        path = f"/2/networks/{_name(name, 'network name')}"
        await self._require(NETWORKS_SINCE, "networks")
        return await self._read("GetNetwork", path, _dict)

    async def create_network(
        self,
        network_name: str,
        network: str,
        gateway: str | None = None,
        network6: str | None = None,
        gateway6: str | None = None,
        mac_prefix: str | None = None,
        add_reserved_ips: Sequence[str] | None = None,
        tags: Sequence[str] | None = None,
        conflicts_check: bool | None = None,
        depends: Depends | None = None,
        dry_run: bool = False,
        *,
        reason: str | None = None,
    ) -> int:
        """Unset keys are left out (the server rejects ``tags: null``); no ``network_type``,
        which no Ganeti release has."""
        _name(network_name, "network name")
        await self._require(NETWORKS_SINCE, "networks")
        body: JSONDict = {"network_name": network_name, "network": network}
        optional: JSONDict = {
            "gateway": gateway,
            "network6": network6,
            "gateway6": gateway6,
            "mac_prefix": mac_prefix,
            "add_reserved_ips": list(add_reserved_ips) if add_reserved_ips is not None else None,
            "tags": list(tags) if tags is not None else None,
            "conflicts_check": conflicts_check,
            "depends": _depends(depends) if depends is not None else None,
        }
        body.update({key: value for key, value in optional.items() if value is not None})
        return await self._submit(
            "CreateNetwork",
            "POST",
            "/2/networks",
            query=[("dry-run", dry_run or None), ("reason", reason)],
            body=body,
        )

    async def connect_network(
        self,
        network_name: str,
        group_name: str,
        mode: str,
        link: str,
        vlan: str | None = None,
        conflicts_check: bool | None = None,
        depends: Depends | None = None,
        dry_run: bool = False,
        *,
        reason: str | None = None,
    ) -> int:
        """One node group per call. ``vlan`` and mode ``openvswitch`` need Ganeti 2.10."""
        path = f"/2/networks/{_name(network_name, 'network name')}/connect"
        version = await self._require(NETWORKS_SINCE, "networks")
        if vlan == "" and version < NETWORK_VLAN_SINCE:
            vlan = None  # "" is the server default from 2.10; older releases lack the key
        if vlan is not None or mode == "openvswitch":
            await self._require(NETWORK_VLAN_SINCE, "a VLAN or openvswitch mode")
        body: JSONDict = {
            "group_name": group_name,
            "network_mode": mode,
            "network_link": link,
        }
        if vlan is not None:
            body["network_vlan"] = vlan
        if conflicts_check is not None:
            body["conflicts_check"] = conflicts_check
        if depends is not None:
            body["depends"] = _depends(depends)
        return await self._submit(
            "ConnectNetwork",
            "PUT",
            path,
            query=[("dry-run", dry_run or None), ("reason", reason)],
            body=body,
        )

    async def disconnect_network(
        self,
        network_name: str,
        group_name: str,
        depends: Depends | None = None,
        dry_run: bool = False,
        *,
        reason: str | None = None,
    ) -> int:
        path = f"/2/networks/{_name(network_name, 'network name')}/disconnect"
        await self._require(NETWORKS_SINCE, "networks")
        body: JSONDict = {"group_name": group_name}
        if depends is not None:
            body["depends"] = _depends(depends)
        return await self._submit(
            "DisconnectNetwork",
            "PUT",
            path,
            query=[("dry-run", dry_run or None), ("reason", reason)],
            body=body,
        )

    async def delete_network(
        self,
        network_name: str,
        depends: Depends | None = None,
        dry_run: bool = False,
        *,
        reason: str | None = None,
    ) -> int:
        """The job fails ("still connected") unless every group was disconnected first:
        pass the disconnect jobs as ``depends``."""
        path = f"/2/networks/{_name(network_name, 'network name')}"
        await self._require(NETWORKS_SINCE, "networks")
        return await self._submit(
            "DeleteNetwork",
            "DELETE",
            path,
            query=[("dry-run", dry_run or None), ("reason", reason)],
            body={"depends": _depends(depends)} if depends is not None else None,
        )

    # -- jobs -----------------------------------------------------------------------------

    @overload
    async def get_jobs(self, bulk: Literal[False] = False) -> list[int]: ...
    @overload
    async def get_jobs(self, bulk: Literal[True]) -> list[JSONDict]: ...
    @overload
    async def get_jobs(self, bulk: bool) -> list[int] | list[JSONDict]: ...
    async def get_jobs(self, bulk: bool = False) -> list[int] | list[JSONDict]:
        """Every job not yet archived (ids as ints), or with ``bulk`` their summaries."""
        if bulk:
            return await self._read("GetJobs", "/2/jobs", _dicts, query=[("bulk", True)])
        return await self._read("GetJobs", "/2/jobs", _job_ids)

    async def get_job_status(self, job_id: int) -> JSONDict:
        """The job's fields. Raises RapiNotFound for an unknown job: 2.10 and older answer
        404, later releases 200 with ``status: null``."""
        status = await self._read("GetJobStatus", _job_path(job_id), _dict)
        if status.get("status") is None:
            raise RapiNotFound(
                f"job {job_id} is unknown to the cluster", method="GET", path=_job_path(job_id)
            )
        return status

    async def wait_for_job_change(
        self,
        job_id: int,
        fields: Sequence[str],
        prev_job_info: Sequence[Any] | None,
        prev_log_serial: int | None,
    ) -> JSONDict | None:
        """One long-poll (a GET with a JSON body; needs a ``write`` user).

        Returns ``{"job_info": [...], "log_entries": [...]}`` once the fields differ from
        ``prev_job_info`` or a log entry newer than ``prev_log_serial`` exists, or after ~10 s
        anyway (2.11+). ``None`` means "no change" (2.10 and older).
        """
        return await self._read(
            "WaitForJobChange",
            f"{_job_path(job_id)}/wait",
            _wait_result,
            body={
                "fields": list(fields),
                "previous_job_info": list(prev_job_info) if prev_job_info is not None else None,
                "previous_log_serial": prev_log_serial,
            },
            read_timeout=max(self._http.timeout, WAIT_TIMEOUT_FLOOR),
        )

    async def cancel_job(self, job_id: int) -> tuple[bool, str]:
        """``(True, msg)`` if canceled; ``(False, msg)`` when the job is past waiting (it then
        runs to its end) or gone. Only queued/waiting jobs can be canceled; the server answers
        once the job has reacted, which can take many seconds."""
        return await self._http.call(
            "CancelJob",
            "DELETE",
            _job_path(job_id),
            _cancel_result,
            read_timeout=max(self._http.timeout, CANCEL_TIMEOUT_FLOOR),
        )

    async def wait_for_job(
        self,
        job_id: int,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 -- an overall budget across many polls
    ) -> JSONDict:
        """Long-poll until the job is final; returns its full status (``GET /2/jobs/<id>``).

        A failed or canceled job is returned, not raised: look at ``status`` and ``opresult``.
        Raises RapiNotFound for an unknown job and RapiTimeout when ``timeout`` elapses.
        """
        try:
            async with asyncio.timeout(timeout):
                return await self._wait_until_final(job_id)
        except TimeoutError as exc:
            raise RapiTimeout(
                f"job {job_id} not finished after {timeout}s",
                method="GET",
                path=f"{_job_path(job_id)}/wait",
            ) from exc

    async def _wait_until_final(self, job_id: int) -> JSONDict:
        # The server answers at once when job_info differs from what we pass back, so passing
        # the last job_info and log serial is what makes this block instead of spin.
        prev_info: list[Any] | None = None
        prev_serial: int | None = None
        while True:
            try:
                change = await self.wait_for_job_change(job_id, ["status"], prev_info, prev_serial)
            except RapiServerError:
                # 2.11+ answer 500 (JobLost) for an unknown job, and also for one archived
                # while we waited: the job resource tells the two apart.
                status = await self.get_job_status(job_id)
                if status["status"] in FINAL_STATUSES:
                    return status
                raise
            if change is None:
                continue
            for entry in change["log_entries"]:
                prev_serial = entry[0] if prev_serial is None else max(prev_serial, entry[0])
            info: list[Any] = change["job_info"]
            current = info[0] if info else None
            if current is None:
                raise RapiNotFound(
                    f"job {job_id} is unknown to the cluster",
                    method="GET",
                    path=f"{_job_path(job_id)}/wait",
                )
            if current in FINAL_STATUSES:
                return await self.get_job_status(job_id)
            if info != prev_info:
                log.debug("RAPI %s: job %d is %s", self.host, job_id, current)
            prev_info = info

    # -- plumbing -------------------------------------------------------------------------

    async def _read(
        self,
        operation: str,
        path: str,
        parse: Callable[[Any], T],
        *,
        query: Query = (),
        body: Any = None,
        read_timeout: float | None = None,
    ) -> T:
        return await self._http.call(
            operation,
            "GET",
            path,
            parse,
            query=query,
            body=body,
            retry=True,
            read_timeout=read_timeout,
        )

    async def _submit(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        query: Query = (),
        body: Any = None,
    ) -> int:
        return await self._http.call(operation, method, path, _job_id, query=query, body=body)

    async def _listing(
        self, operation: str, path: str, bulk: bool, key: str
    ) -> list[str] | list[JSONDict]:
        if bulk:
            return await self._read(
                operation,
                path,
                _dicts,
                query=[("bulk", True)],
                read_timeout=max(self._http.timeout, BULK_TIMEOUT_FLOOR),
            )
        return await self._read(operation, path, _field(key))


def _url_host(host: str) -> str:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    return f"[{host}]" if address.version == 6 else host
