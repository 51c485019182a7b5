"""Alembic environment for the daemon's schema, used by ``daemon.db`` and by the ``alembic`` CLI alike.

The database URL comes from, in order: the caller's ``Config.attributes["database_url"]`` (the daemon),
``alembic -x url=...``, ``sqlalchemy.url`` in ``alembic.ini``, then ``DEEPSIFT_DATABASE_URL``.

Logging: under ``daemon db ...`` the daemon's set-up (``engines.logs``) already renders alembic's records, as
JSON lines in JSON mode, and is left alone. The ``alembic`` CLI takes ``alembic.ini``'s plain format, unless
``DEEPSIFT_LOG_FORMAT`` is set: then the daemon's set-up in that format, so migrations log as the daemon does.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context

from deepsift.daemon.db import make_database
from deepsift.daemon.logs import configure_logging, is_configured
from deepsift.daemon.models import Base

DATABASE_URL_ENV = "DEEPSIFT_DATABASE_URL"
LOG_FORMAT_ENV = "DEEPSIFT_LOG_FORMAT"


def database_url() -> str:
    """The URL to migrate; operators set it on the command line or in the environment."""
    config = context.config
    url = (
        config.attributes.get("database_url")
        or context.get_x_argument(as_dictionary=True).get("url")
        or config.get_main_option("sqlalchemy.url")
        or os.environ.get(DATABASE_URL_ENV)
    )
    if not url:
        raise RuntimeError(f"no database URL: pass -x url=..., set sqlalchemy.url, or set {DATABASE_URL_ENV}")
    return url


def run_migrations_offline() -> None:
    """Print the SQL instead of running it (``alembic upgrade head --sql``), for DBAs who apply it by hand."""
    context.configure(url=database_url(), target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Migrate through the daemon's own engine, so SQLite gets the same pragmas it runs with."""
    engine = make_database(database_url())
    try:
        with engine.connect() as connection:
            context.configure(connection=connection, target_metadata=Base.metadata)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


def set_up_logging() -> None:
    """Keep the daemon's logging when it runs the migrations; otherwise DEEPSIFT_LOG_FORMAT, else alembic.ini."""
    if is_configured():
        return
    if os.environ.get(LOG_FORMAT_ENV):
        configure_logging(os.environ.get("DEEPSIFT_LOG_LEVEL") or "INFO", os.environ[LOG_FORMAT_ENV])
    elif context.config.config_file_name is not None:
        fileConfig(context.config.config_file_name, disable_existing_loggers=False)


set_up_logging()

if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
