"""Instances: the run owed to them (`run_due_at`, for the lost-run sweeper), their trace
(`traceparent`), and their metered compute and CPU time.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("warren_instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("run_due_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("traceparent", sa.String(length=64), nullable=True))
        # Server defaults: existing rows get 0, and so do rows written by a worker of the
        # previous release during a rolling upgrade.
        batch_op.add_column(
            sa.Column("compute_ms", sa.Float(), nullable=False, server_default=sa.text("0"))
        )
        batch_op.add_column(
            sa.Column("cpu_ms", sa.Float(), nullable=False, server_default=sa.text("0"))
        )
        batch_op.create_index(
            batch_op.f("ix_warren_instances_run_due_at"), ["run_due_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("warren_instances", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_warren_instances_run_due_at"))
        batch_op.drop_column("cpu_ms")
        batch_op.drop_column("compute_ms")
        batch_op.drop_column("traceparent")
        batch_op.drop_column("run_due_at")
