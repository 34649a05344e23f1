from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
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
