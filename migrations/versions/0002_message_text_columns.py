"""columns filled from message fields are text

A valid message may carry an opcode, a MAC or an address of any length (CONTRACT §4 bounds
none of them). With fixed widths, such a message failed at commit, was retried and
dead-lettered instead of applied.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# (table, column, width before this revision)
COLUMNS = (
    ("virtual_machines", "backendopcode", 64),
    ("backend_networks", "backendopcode", 64),
    ("network_interfaces", "mac", 32),
    ("network_interfaces", "ipv4", 64),
    ("network_interfaces", "ipv6", 100),
)


def upgrade() -> None:
    for table, column, width in COLUMNS:
        op.alter_column(table, column, type_=sa.Text(), existing_type=sa.String(width))


def downgrade() -> None:
    # the old widths cannot hold every value the new ones can: longer values are cut
    for table, column, width in COLUMNS:
        op.alter_column(
            table,
            column,
            type_=sa.String(width),
            existing_type=sa.Text(),
            postgresql_using=f"left({column}, {width})",
        )
