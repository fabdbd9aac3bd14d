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
| ``DISPATCHER_EVENTD_RAPI_CA_FILE`` | ``<data dir>/rapi.pem`` | PEM to pin (else the system CAs) |
| ``DISPATCHER_EVENTD_RAPI_INSECURE`` | ``false`` | do not verify TLS at all |
| ``DISPATCHER_EVENTD_RAPI_TIMEOUT`` | ``10`` | seconds for one NIC lookup |
| ``DISPATCHER_EVENTD_BUFFER_SIZE`` | ``10000`` | messages held for the broker (then defer) |
| ``DISPATCHER_EVENTD_DEDUPE_JOBS`` | ``10000`` | jobs remembered for deduplication (LRU) |
| ``DISPATCHER_EVENTD_DEDUPE_TTL`` | ``3600`` | seconds a finished job stays remembered |
| ``DISPATCHER_EVENTD_HEARTBEAT_INTERVAL`` | ``30`` | seconds between heartbeats (``0``: none) |
"""

from __future__ import annotations

import logging
import os
import re
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
    heartbeat_interval: int = Field(30, ge=0)

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


_CERT = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def cluster_certificate(data_dir: Path) -> str | None:
    """The certificate part of the cluster's own ``rapi.pem`` (which also holds its key)."""
    try:
        text = (data_dir / "rapi.pem").read_text(encoding="utf-8")
    except OSError:
        return None
    match = _CERT.search(text)
    return match.group(0) + "\n" if match else None


def rapi_client(cfg: EventdSettings, data_dir: Path | None = None) -> RapiClient:
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
    if ca_pem is None and not insecure and data_dir is not None:
        # on the master, the cluster's own (self-signed) RAPI certificate is the one to pin;
        # without it, verification falls back to the system CAs — never silently off
        ca_pem = cluster_certificate(data_dir)
        if ca_pem is not None:
            log.info("pinning the cluster's RAPI certificate from %s", data_dir / "rapi.pem")
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
