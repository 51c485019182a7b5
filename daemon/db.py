"""Database plumbing at the daemon's edge: engines, sessions, migrations and outage errors.

Nothing here runs at import; every engine is made by the caller that needs it. SQLite is the embedded
default, PostgreSQL the production database; the schema itself lives in ``alembic/`` and is applied
with :func:`upgrade_database`.
"""

from __future__ import annotations

import math
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from deepsift.engines.errors import ConfigurationError, DeepsiftError, RetryableError

if TYPE_CHECKING:
    from deepsift.daemon.settings import Settings


def _migrations_dir() -> Path:
    """The migrations: ``deepsift/migrations`` in an installed wheel, ``alembic/`` beside ``daemon/`` in a source
    tree (an editable install maps one to the other)."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "migrations"
    return installed if (installed / "env.py").is_file() else package / "alembic"


ALEMBIC_DIR = _migrations_dir()

# SQLSTATE classes that mean "the server or the moment", not "the statement": connection exception,
# transaction rollback (serialization failure, deadlock), insufficient resources, operator intervention.
_RETRYABLE_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57"})
_RETRYABLE_SQLITE_MESSAGES = ("database is locked", "database table is locked", "unable to open database", "disk i/o")
# What no wait can fix: invalid_catalog_name (no such database), invalid_authorization_specification (no such
# role, no pg_hba.conf entry), invalid_password.
_MISCONFIGURED_SQLSTATES = frozenset({"3D000", "28000", "28P01"})
# libpq refuses a connection without a SQLSTATE: the server's (English) messages for the same refusals.
_MISCONFIGURED_MESSAGES = re.compile(
    r'database "[^"]*" does not exist|role "[^"]*" does not exist|password authentication failed'
    r"|no pg_hba\.conf entry|no password supplied"
)


# Drivers on libpq, which understands the connect_timeout, keepalives and tcp_user_timeout parameters.
_LIBPQ_DRIVERS = frozenset({"psycopg", "psycopg2"})


@dataclass(frozen=True)
class DbTimeouts:
    """How long PostgreSQL may keep the daemon waiting before a connection counts as broken.

    A silent server (packets dropped, not refused) never sends an error: without these a connect waits for
    minutes and a query on an open connection forever. ``statement_s`` None means no limit (migrations).
    Keepalives find an idle connection to a vanished peer after idle + interval × count seconds, and
    ``tcp_user_timeout`` drops one whose sent data stays unacknowledged that long.
    """

    connect_s: float = 10.0
    statement_s: float | None = None
    keepalive_idle_s: int = 10
    keepalive_interval_s: int = 3
    keepalive_count: int = 3

    @classmethod
    def from_settings(cls, settings: Settings) -> DbTimeouts:
        return cls(connect_s=settings.db_connect_timeout_s, statement_s=settings.db_statement_timeout_s)

    @property
    def tcp_user_timeout_ms(self) -> int:
        return 1000 * (self.keepalive_idle_s + self.keepalive_interval_s * self.keepalive_count)

    def libpq_args(self, url: URL) -> dict[str, Any]:
        """libpq connection parameters; one the URL's query names itself wins (``options`` are joined)."""
        args: dict[str, Any] = {
            "connect_timeout": max(2, math.ceil(self.connect_s)),  # libpq's unit is whole seconds, at least 2
            "keepalives": 1,
            "keepalives_idle": self.keepalive_idle_s,
            "keepalives_interval": self.keepalive_interval_s,
            "keepalives_count": self.keepalive_count,
            "tcp_user_timeout": self.tcp_user_timeout_ms,
        }
        args = {name: value for name, value in args.items() if name not in url.query}
        if self.statement_s is not None:
            statement = f"-c statement_timeout={max(1, round(self.statement_s * 1000))}"
            given = url.query.get("options")
            args["options"] = f"{given} {statement}" if isinstance(given, str) and given else statement
        return args


def make_database(url: str, timeouts: DbTimeouts = DbTimeouts()) -> Engine:
    """Create an engine for ``url``; SQLite gets its directory, foreign keys and WAL, PostgreSQL pre-ping and
    ``timeouts`` (the default has no statement limit, so migrations may run long)."""
    with translate_outages(at_start=True):  # a malformed URL or an unknown driver: a configuration error
        parsed = make_url(url)
        if parsed.get_backend_name() != "sqlite":
            connect_args = timeouts.libpq_args(parsed) if parsed.get_driver_name() in _LIBPQ_DRIVERS else {}
            return create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
        engine = create_engine(parsed)
    database_file = _sqlite_file(parsed)
    if database_file is not None:
        database_file.parent.mkdir(parents=True, exist_ok=True)
    event.listen(engine, "connect", _configure_sqlite_connection)
    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose loaded objects stay readable after commit, since verdicts never change."""
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    """An Alembic configuration built in code, so the daemon needs no alembic.ini at run time."""
    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    # Passed as an attribute, not an option: ConfigParser would choke on '%' in an encoded password.
    config.attributes["database_url"] = url
    return config


def upgrade_database(url: str, revision: str = "head") -> None:
    """Migrate the schema up to ``revision``; a database already there is left as it is."""
    with translate_outages(at_start=True):
        command.upgrade(alembic_config(url), revision)


def downgrade_database(url: str, revision: str) -> None:
    """Migrate the schema down to ``revision`` (``"base"`` removes every table, view and trigger)."""
    with translate_outages(at_start=True):
        command.downgrade(alembic_config(url), revision)


def current_revision(url: str) -> str | None:
    """The Alembic revision the database is at, or None when it was never migrated."""
    engine = make_database(url)
    try:
        with translate_outages(at_start=True), engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


class SchemaError(DeepsiftError):
    """The database schema is not the one this code was written for; an operator must migrate."""


def require_current_schema(engine: Engine) -> None:
    """Refuse to run against a database whose schema is not at the newest migration; the first connection of a
    command, so a database or role that does not exist is a ``ConfigurationError`` here, not an outage."""
    with translate_outages(at_start=True), engine.connect() as connection:
        found = MigrationContext.configure(connection).get_current_revision()
    head = ScriptDirectory.from_config(
        alembic_config(engine.url.render_as_string(hide_password=False))
    ).get_current_head()
    if found != head:
        raise SchemaError(f"database schema is at {found or 'nothing'}, code expects {head}: run `daemon db upgrade`")


@contextmanager
def translate_outages(at_start: bool = False) -> Iterator[None]:
    """Re-raise database errors that a later attempt may not hit as ``RetryableError``; others pass.

    ``at_start``: a command's first contact with the database, where a malformed URL or an unknown database,
    role or password (``is_misconfiguration``) is a ``ConfigurationError`` rather than an outage to wait out.
    Later, the same refusal (a password rotated under a running daemon) stays retryable, so no job is lost."""
    try:
        yield
    except (DBAPIError, ArgumentError) as error:
        if at_start and is_misconfiguration(error):
            raise ConfigurationError(f"database: {_first_line(error)}") from error
        if isinstance(error, DBAPIError) and is_outage(error):
            raise RetryableError(f"database unavailable: {error.orig}") from error
        raise


def is_misconfiguration(error: Exception) -> bool:
    """True for what waiting cannot fix: a URL SQLAlchemy cannot parse or load a dialect for, and a server that
    refuses the database, the role or the password (by SQLSTATE, or libpq's message where it gives none)."""
    if isinstance(error, ArgumentError):  # NoSuchModuleError (an unknown dialect or driver) included
        return True
    if not isinstance(error, DBAPIError):
        return False
    sqlstate = getattr(error.orig, "sqlstate", None)
    if sqlstate:
        return sqlstate in _MISCONFIGURED_SQLSTATES
    return isinstance(error, OperationalError) and bool(_MISCONFIGURED_MESSAGES.search(str(error.orig)))


def _first_line(error: Exception) -> str:
    """The driver's own message, first line (libpq's next lines are hints), whitespace runs made one space."""
    cause = error.orig if isinstance(error, DBAPIError) and error.orig is not None else error
    lines = str(cause).strip().splitlines()
    return " ".join((lines[0] if lines else type(cause).__name__).split())


def is_outage(error: DBAPIError) -> bool:
    """True when the database could not be reached or was busy, rather than refusing the statement."""
    if error.connection_invalidated:
        return True
    sqlstate = getattr(error.orig, "sqlstate", None)
    if sqlstate:
        return sqlstate[:2] in _RETRYABLE_SQLSTATE_CLASSES
    if isinstance(error.orig, sqlite3.Error):
        message = str(error.orig).lower()
        return any(fragment in message for fragment in _RETRYABLE_SQLITE_MESSAGES)
    # A server error always carries a SQLSTATE; without one the server never answered.
    return isinstance(error, OperationalError)


def _sqlite_file(url: URL) -> Path | None:
    """The file behind a SQLite URL, or None for in-memory and URI-style databases."""
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _configure_sqlite_connection(dbapi_connection: Any, _connection_record: Any) -> None:
    """SQLite leaves foreign keys off per connection; WAL lets readers (dashboards) run beside the writer."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
    finally:
        cursor.close()
