"""eventd's own settings, ``DISPATCHER_EVENTD_*`` (the shared ones — broker URLs, queue and
data directories, health listener, shutdown grace — come from :class:`Settings`).

| variable | default | meaning |
|---|---|---|
| ``DISPATCHER_EVENTD_CLUSTER`` | ``ssconf_cluster_name`` | the ``cluster`` field of every message |
| ``DISPATCHER_EVENTD_NODE_NAME`` | ``socket.getfqdn()`` | this node's Ganeti name (master check) |
| ``DISPATCHER_EVENTD_MASTER_CHECK`` | ``true`` | publish only while this node is the master |
| ``DISPATCHER_EVENTD_MASTER_POLL`` | ``10`` | seconds between master checks when idle |
| ``DISPATCHER_EVENTD_NIC_SOURCE`` | ``rapi`` | ``rapi``: NICs from the master's RAPI; ``none`` |
| ``DISPATCHER_EVENTD_RAPI_HOST``, ``_PORT`` | ``127.0.0.1``, ``5080`` | where that RAPI is |
| ``DISPATCHER_EVENTD_RAPI_USERNAME`` | none | a read-only RAPI user is enough |
| ``DISPATCHER_EVENTD_RAPI_PASSWORD(_FILE)`` | none | or the credential ``rapi-password`` |
| ``DISPATCHER_EVENTD_RAPI_CA_FILE`` | none | PEM to pin (else loopback: unverified) |
| ``DISPATCHER_EVENTD_RAPI_INSECURE`` | ``false`` | do not verify TLS at all |
| ``DISPATCHER_EVENTD_RAPI_TIMEOUT`` | ``10`` | seconds for one NIC lookup |
| ``DISPATCHER_EVENTD_BUFFER_SIZE`` | ``10000`` | messages held for the broker (then defer) |
| ``DISPATCHER_EVENTD_DEDUPE_JOBS`` | ``10000`` | jobs remembered for deduplication (LRU) |
| ``DISPATCHER_EVENTD_DEDUPE_TTL`` | ``3600`` | seconds a finished job stays remembered |
"""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from dispatcher.logs import register_secret
from dispatcher.rapi.client import RapiClient

__all__ = ["EventdSettings", "load_eventd_settings", "rapi_client"]

log = logging.getLogger(__name__)


# The same sources as Settings: ./.env, then the file named by DISPATCHER_CONFIG; secrets
# also as files in $CREDENTIALS_DIRECTORY (systemd LoadCredential=) or /run/secrets.
def _env_files() -> tuple[str, ...]:
    files = [".env"]
    if cfg := os.environ.get("DISPATCHER_CONFIG"):
        files.append(cfg)
    return tuple(files)


def _read_secret_file(path: Path) -> str:
    return path.read_text(encoding="utf-8").strip()


def _credential(name: str) -> str | None:
    dirs = [Path(d) for d in (os.environ.get("CREDENTIALS_DIRECTORY"),) if d]
    for directory in [*dirs, Path("/run/secrets")]:
        if (directory / name).is_file():
            return _read_secret_file(directory / name)
    return None


class EventdSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DISPATCHER_EVENTD_", extra="ignore", env_file_encoding="utf-8"
    )

    cluster: str | None = None
    node_name: str | None = None
    master_check: bool = True
    master_poll: float = Field(10.0, gt=0)
    nic_source: Literal["rapi", "none"] = "rapi"
    rapi_host: str = "127.0.0.1"
    rapi_port: int = Field(5080, ge=1, le=65535)
    rapi_username: str | None = None
    rapi_password: SecretStr | None = None
    rapi_password_file: Path | None = None
    rapi_ca_file: Path | None = None
    rapi_insecure: bool = False
    rapi_timeout: float = Field(10.0, gt=0)
    buffer_size: int = Field(10_000, ge=1)
    dedupe_jobs: int = Field(10_000, ge=1)
    dedupe_ttl: float = Field(3600.0, ge=0)

    def rapi_password_value(self) -> str | None:
        if self.rapi_password is not None:
            return self.rapi_password.get_secret_value()
        if self.rapi_password_file is not None:
            return _read_secret_file(self.rapi_password_file)
        return _credential("rapi-password")


def load_eventd_settings() -> EventdSettings:
    cfg = EventdSettings(_env_file=_env_files())
    if cfg.rapi_password is not None:
        register_secret(cfg.rapi_password.get_secret_value())
    return cfg


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def rapi_client(cfg: EventdSettings) -> RapiClient:
    """The client for NIC lookups. Raises ValueError/OSError on unusable settings."""
    password = cfg.rapi_password_value()
    if password is not None:
        register_secret(password)
    username = cfg.rapi_username
    if password is not None and username is None:
        raise ValueError("DISPATCHER_EVENTD_RAPI_PASSWORD given without RAPI_USERNAME")
    if username is not None and password is None:
        raise ValueError("DISPATCHER_EVENTD_RAPI_USERNAME given without a password")
    ca_pem = cfg.rapi_ca_file.read_text(encoding="utf-8") if cfg.rapi_ca_file else None
    insecure = cfg.rapi_insecure
    if ca_pem is None and not insecure and _loopback(cfg.rapi_host):
        # Ganeti's RAPI certificate is self-signed; on the master's own loopback there is no
        # network to be in the middle of.
        insecure = True
        log.info("RAPI at %s is on loopback: TLS not verified", cfg.rapi_host)
    return RapiClient(
        cfg.rapi_host,
        cfg.rapi_port,
        username,
        password,
        ca_pem=ca_pem,
        insecure=insecure and ca_pem is None,
        timeout=cfg.rapi_timeout,
        max_attempts=2,
        backoff=0.2,
    )
