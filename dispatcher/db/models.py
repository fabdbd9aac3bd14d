"""The schema. Plain SQLAlchemy 2 declarative models; the event pipeline writes them with
Core statements in bulk (``dispatcher.db.store``), the CLI reads them through the ORM.

``*_events`` are the append-only per-target histories that make processing independent of
delivery order (CONTRACT §5.2): a unique ``digest`` makes a redelivered message a no-op, and
``sort_key`` is the total order in which the history is folded.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _now() -> Any:
    return func.now()


class Backend(Base):
    """A Ganeti cluster reachable over RAPI."""

    __tablename__ = "backends"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    clustername: Mapped[str] = mapped_column(String(255), unique=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer, default=5080)
    username: Mapped[str | None] = mapped_column(String(255))
    password: Mapped[str | None] = mapped_column(Text)  # never printed, logged or serialised
    ca_pem: Mapped[str | None] = mapped_column(Text)
    insecure: Mapped[bool] = mapped_column(Boolean, default=False)
    offline: Mapped[bool] = mapped_column(Boolean, default=False)
    drained: Mapped[bool] = mapped_column(Boolean, default=False)
    mfree: Mapped[int] = mapped_column(Integer, default=0)
    mtotal: Mapped[int] = mapped_column(Integer, default=0)
    dfree: Mapped[int] = mapped_column(Integer, default=0)
    dtotal: Mapped[int] = mapped_column(Integer, default=0)
    pinst_cnt: Mapped[int] = mapped_column(Integer, default=0)
    ctotal: Mapped[int] = mapped_column(Integer, default=0)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    updated: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=_now(), onupdate=_now()
    )
    # the newest heartbeat of the cluster's eventd (its own time), and when an event about
    # the cluster's servers or networks was last applied (the daemon's time)
    last_heartbeat: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_event: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Flavor(Base):
    __tablename__ = "flavors"
    __table_args__ = (UniqueConstraint("cpu", "ram", "disk", "disk_template"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cpu: Mapped[int] = mapped_column(Integer)
    ram: Mapped[int] = mapped_column(Integer)  # MiB
    disk: Mapped[int] = mapped_column(Integer)  # GiB
    disk_template: Mapped[str] = mapped_column(String(32), default="file")
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)

    @property
    def name(self) -> str:
        return f"C{self.cpu}R{self.ram}D{self.disk}{self.disk_template}"


class VirtualMachine(Base):
    __tablename__ = "virtual_machines"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    backend_id: Mapped[int | None] = mapped_column(ForeignKey("backends.id"), index=True)
    flavor_id: Mapped[int] = mapped_column(ForeignKey("flavors.id"))
    imageid: Mapped[str] = mapped_column(String(255), default="")
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    updated: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=_now(), onupdate=_now()
    )
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    suspended: Mapped[bool] = mapped_column(Boolean, default=False)
    action: Mapped[str | None] = mapped_column(String(30))
    operstate: Mapped[str] = mapped_column(String(30), default="BUILD")
    backendjobid: Mapped[int | None] = mapped_column(BigInteger)
    backendopcode: Mapped[str | None] = mapped_column(Text)
    backendjobstatus: Mapped[str | None] = mapped_column(String(30))
    backendlogmsg: Mapped[str | None] = mapped_column(Text)
    buildpercentage: Mapped[int] = mapped_column(Integer, default=0)
    backendtime: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # sort key of the newest event folded into this row (see dispatcher.history)
    last_key: Mapped[bytes | None] = mapped_column(LargeBinary)

    nics: Mapped[list[NetworkInterface]] = relationship(
        back_populates="machine", order_by="NetworkInterface.index", lazy="selectin"
    )


class Network(Base):
    __tablename__ = "networks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    subnet: Mapped[str] = mapped_column(String(64))
    gateway: Mapped[str | None] = mapped_column(String(64))
    public: Mapped[bool] = mapped_column(Boolean, default=False)
    mode: Mapped[str] = mapped_column(String(16), default="bridged")
    link: Mapped[str | None] = mapped_column(String(128))
    dhcp: Mapped[bool] = mapped_column(Boolean, default=False)
    mac_prefix: Mapped[str | None] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(30), default="PENDING")
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    action: Mapped[str | None] = mapped_column(String(30))
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    updated: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=_now(), onupdate=_now()
    )

    backends: Mapped[list[BackendNetwork]] = relationship(
        back_populates="network", order_by="BackendNetwork.backend_id", lazy="selectin"
    )


class BackendNetwork(Base):
    __tablename__ = "backend_networks"
    __table_args__ = (UniqueConstraint("network_id", "backend_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    network_id: Mapped[int] = mapped_column(ForeignKey("networks.id"))
    backend_id: Mapped[int] = mapped_column(ForeignKey("backends.id"), index=True)
    operstate: Mapped[str] = mapped_column(String(30), default="PENDING")
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    backendjobid: Mapped[int | None] = mapped_column(BigInteger)
    backendopcode: Mapped[str | None] = mapped_column(Text)
    backendjobstatus: Mapped[str | None] = mapped_column(String(30))
    backendlogmsg: Mapped[str | None] = mapped_column(Text)
    backendtime: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    updated: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=_now(), onupdate=_now()
    )

    network: Mapped[Network] = relationship(back_populates="backends")


class NetworkInterface(Base):
    __tablename__ = "network_interfaces"
    __table_args__ = (UniqueConstraint("machine_id", "index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    machine_id: Mapped[int] = mapped_column(ForeignKey("virtual_machines.id"))
    network_id: Mapped[int] = mapped_column(ForeignKey("networks.id"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    mac: Mapped[str] = mapped_column(Text, default="")
    ipv4: Mapped[str] = mapped_column(Text, default="")
    ipv6: Mapped[str] = mapped_column(Text, default="")
    firewall_profile: Mapped[str] = mapped_column(String(30), default="")

    machine: Mapped[VirtualMachine] = relationship(back_populates="nics")


class VmDiagnostic(Base):
    """Build messages (image-*) and problems found while applying events, per VM."""

    __tablename__ = "vm_diagnostics"
    __table_args__ = (UniqueConstraint("machine_id", "digest"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    machine_id: Mapped[int] = mapped_column(ForeignKey("virtual_machines.id"))
    digest: Mapped[bytes] = mapped_column(LargeBinary)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    level: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(100))
    source_date: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    message: Mapped[str] = mapped_column(Text)
    details: Mapped[str | None] = mapped_column(Text)


class VmEvent(Base):
    """Every distinct message applied to a VM: the history folded by ``dispatcher.history``."""

    __tablename__ = "vm_events"
    __table_args__ = (
        UniqueConstraint("machine_id", "digest"),
        Index("ix_vm_events_machine_key", "machine_id", "sort_key"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    machine_id: Mapped[int] = mapped_column(ForeignKey("virtual_machines.id"))
    digest: Mapped[bytes] = mapped_column(LargeBinary)
    sort_key: Mapped[bytes] = mapped_column(LargeBinary)
    kind: Mapped[int] = mapped_column(SmallInteger)
    event_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    body: Mapped[dict[str, Any]] = mapped_column(JSONB)
    received: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class NetworkEvent(Base):
    """Every distinct ``ganeti-network-status`` applied to a backend network."""

    __tablename__ = "network_events"
    __table_args__ = (
        UniqueConstraint("backend_network_id", "digest"),
        Index("ix_network_events_bn_key", "backend_network_id", "sort_key"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    backend_network_id: Mapped[int] = mapped_column(ForeignKey("backend_networks.id"))
    digest: Mapped[bytes] = mapped_column(LargeBinary)
    sort_key: Mapped[bytes] = mapped_column(LargeBinary)
    event_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    body: Mapped[dict[str, Any]] = mapped_column(JSONB)
    received: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
