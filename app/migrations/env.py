"""Alembic environment: the connection comes from app.db.migrate (or P2L settings on the CLI)."""

from alembic import context

from app.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # `alembic upgrade head` from a shell
    from app.config import Settings
    from app.db import make_engine

    connection = make_engine(Settings().sqlalchemy_url).connect()

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
