"""what each worker has resident and how long a swap-in takes (workers.resident, load_s)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-28 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("resident", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("load_s", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.drop_column("load_s")
        batch_op.drop_column("resident")
