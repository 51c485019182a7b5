"""Engine set-up and outage handling in daemon.db, on real databases."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from deepsift.daemon.db import current_revision, make_database, upgrade_database
from deepsift.daemon.repository import VerdictRepository
from deepsift.engines.errors import RetryableError

pytestmark = pytest.mark.integration

UNREACHABLE_POSTGRES = "postgresql+psycopg://deepsift@127.0.0.1:1/deepsift?connect_timeout=2"


def test_a_sqlite_file_gets_its_directory_foreign_keys_and_wal(tmp_path: Path) -> None:
    # Given a SQLite URL in a directory that does not exist yet
    url = f"sqlite:///{tmp_path / 'var' / 'db' / 'deepsift.db'}"
    # When the engine connects
    engine = make_database(url)
    try:
        with engine.connect() as connection:
            foreign_keys = connection.execute(text("PRAGMA foreign_keys")).scalar_one()
            journal_mode = connection.execute(text("PRAGMA journal_mode")).scalar_one()
    finally:
        engine.dispose()
    # Then the file exists and the connection enforces foreign keys in WAL mode
    assert (tmp_path / "var" / "db" / "deepsift.db").is_file()
    assert (foreign_keys, journal_mode) == (1, "wal")


def test_a_child_row_needs_its_verdict(db_engine: Engine) -> None:
    # Given the migrated schema; When a frame points at no verdict; Then the foreign key refuses it
    with pytest.raises(IntegrityError), db_engine.begin() as connection:
        connection.execute(
            text("INSERT INTO verdict_frames (verdict_id, frame_index, p_fake) VALUES (:id, 0, 0.5)"), {"id": 2**40}
        )


def test_an_unreachable_database_is_retryable() -> None:
    # Given a PostgreSQL URL nothing listens on
    repository = VerdictRepository(make_database(UNREACHABLE_POSTGRES))
    # When the repository or the migrations use it; Then the caller is told to retry later
    with pytest.raises(RetryableError) as raised:
        repository.count()
    assert isinstance(raised.value.__cause__, OperationalError)
    with pytest.raises(RetryableError):
        upgrade_database(UNREACHABLE_POSTGRES)
    with pytest.raises(RetryableError):
        current_revision(UNREACHABLE_POSTGRES)


def test_a_missing_schema_is_not_retryable(empty_database_url: str) -> None:
    # Given a reachable database that was never migrated
    engine = make_database(empty_database_url)
    try:
        # When the repository reads from it; Then the database error passes through, not a RetryableError
        # that would have the daemon back off forever
        with pytest.raises(DBAPIError, match="verdicts"):
            VerdictRepository(engine).count()
    finally:
        engine.dispose()
