from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from processor.store import migrations
from processor.store.tables import metadata


def test_the_migrations_create_exactly_the_tables_the_models_describe(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path}/m.db")
    with engine.begin() as connection:
        migrations.upgrade(connection)
        assert migrations.current_revision(connection) == migrations.head_revision()
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
    engine.dispose()
    assert differences == []


def test_a_database_of_the_first_release_upgrades_with_its_instances(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path}/old.db")
    with engine.begin() as connection:
        command.upgrade(migrations.config(connection), "0001")
        connection.execute(
            sa.text(
                "INSERT INTO warren_instances (id, workflow, status, generation, "
                "pause_requested, created_at, updated_at) VALUES ('old-1', 'w', 'waiting', 0, "
                "0, '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
            )
        )
        migrations.upgrade(connection)
        row = connection.execute(
            sa.text("SELECT compute_ms, cpu_ms, run_due_at FROM warren_instances")
        ).one()
    engine.dispose()
    assert tuple(row) == (0, 0, None)
