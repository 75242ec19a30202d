"""instance placement: on an instance of a many-model fleet, the models the control loop's
placement put there (the front ends route a model where it is placed) and those being drained
off it before their unload; null placed_models where no placement manages the instance

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("placed_models", sa.JSON, nullable=True))
        batch.add_column(sa.Column("draining_models", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("draining_models")
        batch.drop_column("placed_models")
