"""inference keys: scope, times and the SHA-256 of each key's secret

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "inference_keys",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("scope", sa.JSON, nullable=False),
        sa.Column("label", sa.Text, nullable=True),
        sa.Column("created_at_s", sa.Float, nullable=False),
        sa.Column("expires_at_s", sa.Float, nullable=True),
        sa.Column("last_used_at_s", sa.Float, nullable=True),
        sa.Column("revoked_at_s", sa.Float, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("inference_keys")
