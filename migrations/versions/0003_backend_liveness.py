"""per backend: when its eventd last sent a heartbeat, and when its last event was applied

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("backends", sa.Column("last_heartbeat", sa.DateTime(timezone=True)))
    op.add_column("backends", sa.Column("last_event", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("backends", "last_event")
    op.drop_column("backends", "last_heartbeat")
