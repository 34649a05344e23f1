"""Awaited results: `warren_awaited_results` holds the instances a client's `result()` waits
for; on PostgreSQL, when one of them reaches a terminal status, a trigger sends a NOTIFY on
channel `warren_ended` (payload: the instance id) and deletes its row, so `result()` returns
as soon as the end is committed instead of at its next poll (processor/store/notifications.py).
SQLite has no NOTIFY: it only gets the table.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "warren_awaited_results",
        sa.Column("instance_id", sa.String(length=100), nullable=False),
        sa.PrimaryKeyConstraint("instance_id"),
    )
    if op.get_context().dialect.name != "postgresql":
        return
    # Created in the first schema of the search path, beside the tables. Only awaited
    # instances notify: a notifying transaction's commit is serialised with every other
    # notifying one on the server, and most instances nobody waits for.
    op.execute(
        """
        CREATE FUNCTION warren_notify_ended() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            DELETE FROM warren_awaited_results WHERE instance_id = NEW.id;
            IF FOUND THEN
                PERFORM pg_notify('warren_ended', NEW.id);
            END IF;
            RETURN NULL;
        END
        $$
        """
    )
    # The WHEN clause is evaluated without calling the function: only an update that ends an
    # instance calls it.
    op.execute(
        """
        CREATE TRIGGER warren_instance_ended
        AFTER UPDATE OF status ON warren_instances
        FOR EACH ROW
        WHEN (NEW.status IN ('complete', 'errored', 'terminated')
              AND OLD.status IS DISTINCT FROM NEW.status)
        EXECUTE FUNCTION warren_notify_ended()
        """
    )


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP TRIGGER warren_instance_ended ON warren_instances")
        op.execute("DROP FUNCTION warren_notify_ended()")
    op.drop_table("warren_awaited_results")
