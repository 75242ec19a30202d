"""leadership: the control loop's lease with its term, the term on each decision, and the
request counts each front end observed per model and bucket

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("holder", sa.String(255), nullable=False),
        sa.Column("term", sa.Integer, nullable=False),
        sa.Column("expires_at_s", sa.Float, nullable=False),
    )
    op.create_table(
        "observed_counts",
        sa.Column("host", sa.String(255), primary_key=True),
        sa.Column("model", sa.String(63), primary_key=True),
        sa.Column("bucket_start_s", sa.Float, primary_key=True),
        sa.Column("requests", sa.Float, nullable=False),
    )
    op.create_index("ix_observed_counts_bucket", "observed_counts", ["bucket_start_s"])
    with op.batch_alter_table("decisions") as batch:
        batch.add_column(sa.Column("term", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.drop_column("term")
    op.drop_index("ix_observed_counts_bucket", table_name="observed_counts")
    op.drop_table("observed_counts")
    op.drop_table("leases")
