"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "backends",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("clustername", sa.String(length=255), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=255), nullable=True),
        sa.Column("password", sa.Text(), nullable=True),
        sa.Column("ca_pem", sa.Text(), nullable=True),
        sa.Column("insecure", sa.Boolean(), nullable=False),
        sa.Column("offline", sa.Boolean(), nullable=False),
        sa.Column("drained", sa.Boolean(), nullable=False),
        sa.Column("mfree", sa.Integer(), nullable=False),
        sa.Column("mtotal", sa.Integer(), nullable=False),
        sa.Column("dfree", sa.Integer(), nullable=False),
        sa.Column("dtotal", sa.Integer(), nullable=False),
        sa.Column("pinst_cnt", sa.Integer(), nullable=False),
        sa.Column("ctotal", sa.Integer(), nullable=False),
        sa.Column(
            "created", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column(
            "updated", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backends")),
        sa.UniqueConstraint("clustername", name=op.f("uq_backends_clustername")),
    )
    op.create_table(
        "flavors",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("cpu", sa.Integer(), nullable=False),
        sa.Column("ram", sa.Integer(), nullable=False),
        sa.Column("disk", sa.Integer(), nullable=False),
        sa.Column("disk_template", sa.String(length=32), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_flavors")),
        sa.UniqueConstraint("cpu", "ram", "disk", "disk_template", name=op.f("uq_flavors_cpu")),
    )
    op.create_table(
        "networks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("subnet", sa.String(length=64), nullable=False),
        sa.Column("gateway", sa.String(length=64), nullable=True),
        sa.Column("public", sa.Boolean(), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("link", sa.String(length=128), nullable=True),
        sa.Column("dhcp", sa.Boolean(), nullable=False),
        sa.Column("mac_prefix", sa.String(length=32), nullable=True),
        sa.Column("state", sa.String(length=30), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("action", sa.String(length=30), nullable=True),
        sa.Column(
            "created", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column(
            "updated", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_networks")),
    )
    op.create_table(
        "backend_networks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("network_id", sa.Integer(), nullable=False),
        sa.Column("backend_id", sa.Integer(), nullable=False),
        sa.Column("operstate", sa.String(length=30), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("backendjobid", sa.BigInteger(), nullable=True),
        sa.Column("backendopcode", sa.String(length=64), nullable=True),
        sa.Column("backendjobstatus", sa.String(length=30), nullable=True),
        sa.Column("backendlogmsg", sa.Text(), nullable=True),
        sa.Column("backendtime", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_key", sa.LargeBinary(), nullable=True),
        sa.Column(
            "created", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column(
            "updated", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["backend_id"], ["backends.id"], name=op.f("fk_backend_networks_backend_id_backends")
        ),
        sa.ForeignKeyConstraint(
            ["network_id"], ["networks.id"], name=op.f("fk_backend_networks_network_id_networks")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backend_networks")),
        sa.UniqueConstraint(
            "network_id", "backend_id", name=op.f("uq_backend_networks_network_id")
        ),
    )
    op.create_index(
        op.f("ix_backend_networks_backend_id"), "backend_networks", ["backend_id"], unique=False
    )
    op.create_table(
        "virtual_machines",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("backend_id", sa.Integer(), nullable=True),
        sa.Column("flavor_id", sa.Integer(), nullable=False),
        sa.Column("imageid", sa.String(length=255), nullable=False),
        sa.Column(
            "created", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column(
            "updated", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("suspended", sa.Boolean(), nullable=False),
        sa.Column("action", sa.String(length=30), nullable=True),
        sa.Column("operstate", sa.String(length=30), nullable=False),
        sa.Column("backendjobid", sa.BigInteger(), nullable=True),
        sa.Column("backendopcode", sa.String(length=64), nullable=True),
        sa.Column("backendjobstatus", sa.String(length=30), nullable=True),
        sa.Column("backendlogmsg", sa.Text(), nullable=True),
        sa.Column("buildpercentage", sa.Integer(), nullable=False),
        sa.Column("backendtime", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_key", sa.LargeBinary(), nullable=True),
        sa.ForeignKeyConstraint(
            ["backend_id"], ["backends.id"], name=op.f("fk_virtual_machines_backend_id_backends")
        ),
        sa.ForeignKeyConstraint(
            ["flavor_id"], ["flavors.id"], name=op.f("fk_virtual_machines_flavor_id_flavors")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_virtual_machines")),
    )
    op.create_index(
        op.f("ix_virtual_machines_backend_id"), "virtual_machines", ["backend_id"], unique=False
    )
    op.create_table(
        "network_events",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("backend_network_id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.LargeBinary(), nullable=False),
        sa.Column("sort_key", sa.LargeBinary(), nullable=False),
        sa.Column("event_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("body", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "received", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["backend_network_id"],
            ["backend_networks.id"],
            name=op.f("fk_network_events_backend_network_id_backend_networks"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_network_events")),
        sa.UniqueConstraint(
            "backend_network_id", "digest", name=op.f("uq_network_events_backend_network_id")
        ),
    )
    op.create_index(
        "ix_network_events_bn_key",
        "network_events",
        ["backend_network_id", "sort_key"],
        unique=False,
    )
    op.create_table(
        "network_interfaces",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("machine_id", sa.Integer(), nullable=False),
        sa.Column("network_id", sa.Integer(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("mac", sa.String(length=32), nullable=False),
        sa.Column("ipv4", sa.String(length=64), nullable=False),
        sa.Column("ipv6", sa.String(length=100), nullable=False),
        sa.Column("firewall_profile", sa.String(length=30), nullable=False),
        sa.ForeignKeyConstraint(
            ["machine_id"],
            ["virtual_machines.id"],
            name=op.f("fk_network_interfaces_machine_id_virtual_machines"),
        ),
        sa.ForeignKeyConstraint(
            ["network_id"], ["networks.id"], name=op.f("fk_network_interfaces_network_id_networks")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_network_interfaces")),
        sa.UniqueConstraint("machine_id", "index", name=op.f("uq_network_interfaces_machine_id")),
    )
    op.create_index(
        op.f("ix_network_interfaces_network_id"), "network_interfaces", ["network_id"], unique=False
    )
    op.create_table(
        "vm_diagnostics",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("machine_id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.LargeBinary(), nullable=False),
        sa.Column(
            "created", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("level", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=100), nullable=False),
        sa.Column("source_date", sa.DateTime(timezone=True), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("details", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["machine_id"],
            ["virtual_machines.id"],
            name=op.f("fk_vm_diagnostics_machine_id_virtual_machines"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vm_diagnostics")),
        sa.UniqueConstraint("machine_id", "digest", name=op.f("uq_vm_diagnostics_machine_id")),
    )
    op.create_table(
        "vm_events",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("machine_id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.LargeBinary(), nullable=False),
        sa.Column("sort_key", sa.LargeBinary(), nullable=False),
        sa.Column("kind", sa.SmallInteger(), nullable=False),
        sa.Column("event_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("body", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "received", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["machine_id"],
            ["virtual_machines.id"],
            name=op.f("fk_vm_events_machine_id_virtual_machines"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vm_events")),
        sa.UniqueConstraint("machine_id", "digest", name=op.f("uq_vm_events_machine_id")),
    )
    op.create_index(
        "ix_vm_events_machine_key", "vm_events", ["machine_id", "sort_key"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_vm_events_machine_key", table_name="vm_events")
    op.drop_table("vm_events")
    op.drop_table("vm_diagnostics")
    op.drop_index(op.f("ix_network_interfaces_network_id"), table_name="network_interfaces")
    op.drop_table("network_interfaces")
    op.drop_index("ix_network_events_bn_key", table_name="network_events")
    op.drop_table("network_events")
    op.drop_index(op.f("ix_virtual_machines_backend_id"), table_name="virtual_machines")
    op.drop_table("virtual_machines")
    op.drop_index(op.f("ix_backend_networks_backend_id"), table_name="backend_networks")
    op.drop_table("backend_networks")
    op.drop_table("networks")
    op.drop_table("flavors")
    op.drop_table("backends")
