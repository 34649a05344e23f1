"""Initial tables: workflows, workers, instances, steps, events, outbox, processed messages.

Revision ID: 0001
Revises:
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "warren_workers",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "warren_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("instance_id", sa.String(length=100), nullable=False),
        sa.Column("type", sa.String(length=100), nullable=False),
        sa.Column("payload", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("consumed_by", sa.String(length=300), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("warren_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_warren_events_instance_type", ["instance_id", "type", "id"], unique=False
        )

    op.create_table(
        "warren_instances",
        sa.Column("id", sa.String(length=100), nullable=False),
        sa.Column("workflow", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("pause_requested", sa.Boolean(), nullable=False),
        sa.Column("params", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("output", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("error", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("warren_instances", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_warren_instances_created_at"), ["created_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_warren_instances_status"), ["status"], unique=False)
        batch_op.create_index(
            "ix_warren_instances_workflow_status", ["workflow", "status"], unique=False
        )

    op.create_table(
        "warren_outbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("workflow", sa.String(length=100), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("wake_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("warren_outbox", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_warren_outbox_created_at"), ["created_at"], unique=False
        )

    op.create_table(
        "warren_processed_messages",
        sa.Column("message_id", sa.String(length=200), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("message_id"),
    )
    with op.batch_alter_table("warren_processed_messages", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_warren_processed_messages_processed_at"), ["processed_at"], unique=False
        )

    op.create_table(
        "warren_steps",
        sa.Column("instance_id", sa.String(length=100), nullable=False),
        sa.Column("key", sa.String(length=300), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("wake_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("swept_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("event_type", sa.String(length=100), nullable=True),
        sa.Column("output", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("error", sa.JSON(none_as_null=True), nullable=True),
        sa.PrimaryKeyConstraint("instance_id", "key"),
    )
    with op.batch_alter_table("warren_steps", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_warren_steps_wake_at"), ["wake_at"], unique=False)

    op.create_table(
        "warren_workflows",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("warren_workers")
    op.drop_table("warren_workflows")
    with op.batch_alter_table("warren_steps", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_warren_steps_wake_at"))

    op.drop_table("warren_steps")
    with op.batch_alter_table("warren_processed_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_warren_processed_messages_processed_at"))

    op.drop_table("warren_processed_messages")
    with op.batch_alter_table("warren_outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_warren_outbox_created_at"))

    op.drop_table("warren_outbox")
    with op.batch_alter_table("warren_instances", schema=None) as batch_op:
        batch_op.drop_index("ix_warren_instances_workflow_status")
        batch_op.drop_index(batch_op.f("ix_warren_instances_status"))
        batch_op.drop_index(batch_op.f("ix_warren_instances_created_at"))

    op.drop_table("warren_instances")
    with op.batch_alter_table("warren_events", schema=None) as batch_op:
        batch_op.drop_index("ix_warren_events_instance_type")

    op.drop_table("warren_events")
