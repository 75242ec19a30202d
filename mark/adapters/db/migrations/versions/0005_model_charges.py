"""per-model charges: the busy seconds front ends saw per instance and model, and each
instance's charge shared among its models by them

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "observed_busy",
        sa.Column("host", sa.String(255), primary_key=True),
        sa.Column("instance_id", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(63), primary_key=True),
        sa.Column("seconds", sa.Float, nullable=False),
    )
    op.create_table(
        "instance_model_charges",
        sa.Column("instance_id", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(63), primary_key=True),
        sa.Column("usd", sa.Float, nullable=False),
        sa.Column("busy_s", sa.Float, nullable=False),
    )
    # Charges recorded before this revision go whole to the model their instance listed.
    op.execute(
        "INSERT INTO instance_model_charges (instance_id, model, usd, busy_s) "
        "SELECT instance_id, model, usd, 0.0 FROM instance_charges"
    )


def downgrade() -> None:
    op.drop_table("instance_model_charges")
    op.drop_table("observed_busy")
