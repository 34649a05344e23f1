"""Indexes for listing instances page by page, newest first, optionally by status or workflow.

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = {
    "ix_warren_instances_created_at_id": ["created_at", "id"],
    "ix_warren_instances_status_created_at_id": ["status", "created_at", "id"],
    "ix_warren_instances_workflow_created_at_id": ["workflow", "created_at", "id"],
}


def upgrade() -> None:
    with op.batch_alter_table("warren_instances", schema=None) as batch_op:
        for name, columns in INDEXES.items():
            batch_op.create_index(name, columns, unique=False)


def downgrade() -> None:
    with op.batch_alter_table("warren_instances", schema=None) as batch_op:
        for name in INDEXES:
            batch_op.drop_index(name)
