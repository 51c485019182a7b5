"""The daemon's verdict store, read by the trainer as plain SQL (``text()`` queries, no daemon models).

The URL comes from ``--db``, else ``DEEPSIFT_DATABASE_URL``, else the daemon's embedded default, so a trainer
run next to a daemon reads the same database without being told.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from deepsift.engines.errors import DeepsiftError

if TYPE_CHECKING:
    from sqlalchemy import Connection

DATABASE_URL_ENV = "DEEPSIFT_DATABASE_URL"
DEFAULT_DATABASE_URL = "sqlite:///var/deepsift.db"  # the daemon's default (daemon.settings.Settings.database_url)
DB_HELP = f"verdict store URL (default: env {DATABASE_URL_ENV}, else {DEFAULT_DATABASE_URL})"


def database_url(given: str | None) -> str:
    """``--db`` if given, else the environment's URL, else the daemon's default."""
    return given or os.environ.get(DATABASE_URL_ENV) or DEFAULT_DATABASE_URL


@contextlib.contextmanager
def read_verdict_store(url: str) -> Iterator[Connection]:
    """A connection for reading; a missing SQLite file or an unreachable server is a ``DeepsiftError`` that says
    which database, never an empty database created by accident."""
    from sqlalchemy import create_engine, make_url
    from sqlalchemy.exc import SQLAlchemyError

    parsed = make_url(url)
    local = parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:")
    if local and not Path(parsed.database).is_file():
        raise DeepsiftError(f"no verdict store at {parsed.database} (--db, env {DATABASE_URL_ENV})")
    engine = create_engine(parsed)
    try:
        with engine.connect() as connection:
            yield connection
    except SQLAlchemyError as e:
        where = parsed.render_as_string(hide_password=True)
        cause = getattr(e, "orig", None) or e  # the driver's message, without the statement
        raise DeepsiftError(f"cannot read the verdict store at {where} ({type(e).__name__}: {cause})") from e
    finally:
        engine.dispose()
