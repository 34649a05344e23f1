"""Alembic environment: Warren always hands it an open connection (see migrations.upgrade)."""

from alembic import context

from processor.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `warren db upgrade`, which opens the connection")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
