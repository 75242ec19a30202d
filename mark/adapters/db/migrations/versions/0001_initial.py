"""initial schema: models, profiles, instance types, offerings, instances, transitions,
decisions, cost ledger

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("slo_latency_ms", sa.Float, nullable=False),
        sa.Column("slo_percentile", sa.Float, nullable=False),
        sa.Column("backend", sa.JSON, nullable=False),
        sa.Column("max_batch", sa.Integer, nullable=False),
        sa.Column("created_at_s", sa.Float, nullable=False),
        sa.Column("updated_at_s", sa.Float, nullable=False),
    )
    op.create_table(
        "profiles",
        sa.Column(
            "model_name",
            sa.String(63),
            sa.ForeignKey("models.name", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("instance_type", sa.String(64), primary_key=True),
        sa.Column("latency_ms", sa.JSON, nullable=False),
        sa.Column("max_batch", sa.Integer, nullable=False),
        sa.Column("memory_mb", sa.Float, nullable=False),
        sa.Column("parallelism", sa.Integer, nullable=False),
        sa.Column("estimated", sa.Boolean, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
    )
    op.create_table(
        "instance_types",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("data", sa.JSON, nullable=False),
    )
    op.create_table(
        "offerings",
        sa.Column("key", sa.String(160), primary_key=True),
        sa.Column("instance_type", sa.String(64), nullable=False),
        sa.Column("zone", sa.String(64), nullable=False),
        sa.Column("market", sa.String(16), nullable=False),
        sa.Column("price_per_hour", sa.Float, nullable=False),
        sa.Column("available", sa.Boolean, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("updated_at_s", sa.Float, nullable=False),
    )
    op.create_table(
        "instances",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("offering", sa.JSON, nullable=False),
        sa.Column("instance_type", sa.String(64), nullable=False),
        sa.Column("market", sa.String(16), nullable=False),
        sa.Column("models", sa.JSON, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("endpoint", sa.String(255), nullable=True),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("launched_at_s", sa.Float, nullable=False),
        sa.Column("running_at_s", sa.Float, nullable=True),
        sa.Column("draining_at_s", sa.Float, nullable=True),
        sa.Column("terminated_at_s", sa.Float, nullable=True),
    )
    op.create_index("ix_instances_state", "instances", ["state"])
    op.create_table(
        "instance_transitions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("instance_id", sa.String(64), nullable=False),
        sa.Column("from_state", sa.String(16), nullable=True),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("at_s", sa.Float, nullable=False),
    )
    op.create_index("ix_transitions_instance", "instance_transitions", ["instance_id"])
    op.create_table(
        "decisions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at_s", sa.Float, nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("model", sa.String(63), nullable=True),
        sa.Column("instance_id", sa.String(64), nullable=True),
        sa.Column("offering_key", sa.String(160), nullable=True),
        sa.Column("expected_cost_usd", sa.Float, nullable=False),
        sa.Column("forecast_upper_rps", sa.JSON, nullable=False),
    )
    op.create_index("ix_decisions_at", "decisions", ["at_s"])
    op.create_table(
        "instance_charges",
        sa.Column("instance_id", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(63), nullable=False),
        sa.Column("instance_type", sa.String(64), nullable=False),
        sa.Column("market", sa.String(16), nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
        sa.Column("usd", sa.Float, nullable=False),
        sa.Column("updated_at_s", sa.Float, nullable=False),
    )
    op.create_table(
        "serverless_charges",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at_s", sa.Float, nullable=False),
        sa.Column("model", sa.String(63), nullable=False),
        sa.Column("requests", sa.Integer, nullable=False),
        sa.Column("gb_seconds", sa.Float, nullable=False),
        sa.Column("usd", sa.Float, nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    for table in (
        "serverless_charges",
        "instance_charges",
        "decisions",
        "instance_transitions",
        "instances",
        "offerings",
        "instance_types",
        "profiles",
        "models",
    ):
        op.drop_table(table)
