"""PostgreSQL: a NOTIFY on channel `warren_ended` (payload: the instance id) when an instance
reaches a terminal status, so `Instance.result()` returns as soon as it is committed instead of
at its next poll (processor/store/notifications.py). SQLite has no NOTIFY: nothing changes.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    # Created in the first schema of the search path, beside the tables.
    op.execute(
        """
        CREATE FUNCTION warren_notify_ended() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('warren_ended', NEW.id);
            RETURN NULL;
        END
        $$
        """
    )
    # The WHEN clause is evaluated without calling the function: every other update of an
    # instance (a round a step) costs nothing more.
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
    if op.get_context().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER warren_instance_ended ON warren_instances")
    op.execute("DROP FUNCTION warren_notify_ended()")
