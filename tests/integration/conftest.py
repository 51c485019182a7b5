"""Real databases for integration tests: a SQLite file and a throwaway PostgreSQL database.

``database_url`` is migrated to head once per session and dialect and shared by every test that asks
for it, so tests must not assume an empty database (use unique job ids, compare counts before and
after). ``empty_database_url`` is a fresh, unmigrated database per test, for migration tests.

PostgreSQL comes from ``DEEPSIFT_TEST_POSTGRES_URL`` (default below). When it is unreachable the
PostgreSQL cases skip on a laptop and fail under ``CI=true``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

import pytest
from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError

from daemon.db import make_engine, upgrade_database
from daemon.records import EngineIdentity, FrameScoreRecord, MaskRecord, TrackSummaryRecord, VerdictRecord

POSTGRES_URL_ENV = "DEEPSIFT_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DIALECTS = ("sqlite", "postgresql")


class PostgresServer:
    """Creates uniquely named databases on the test server and drops them all at the end."""

    def __init__(self, admin: Engine) -> None:
        self._admin = admin
        self._created: list[str] = []

    def create_database(self) -> str:
        name = f"deepsift_it_{uuid.uuid4().hex[:12]}"
        with self._admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        self._created.append(name)
        return self._admin.url.set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        with self._admin.connect() as connection:
            for name in self._created:
                connection.execute(
                    text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"),
                    {"name": name},
                )
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        self._created.clear()


def _postgres_unavailable(url: URL, error: Exception) -> NoReturn:
    reason = f"PostgreSQL at {url.render_as_string()} is unreachable ({type(error).__name__}); set {POSTGRES_URL_ENV}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The PostgreSQL test server, reached through an autocommit connection for CREATE/DROP DATABASE."""
    url = make_url(os.environ.get(POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL))
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text("SELECT 1"))
    except OperationalError as error:
        admin.dispose()
        _postgres_unavailable(url, error)
    server = PostgresServer(admin)
    yield server
    server.drop_all()
    admin.dispose()


def _new_database_url(request: pytest.FixtureRequest, directory: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{directory / 'deepsift.db'}"
    return request.getfixturevalue("postgres_server").create_database()


@pytest.fixture(scope="session", params=DIALECTS)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database migrated to head by the real migrations, shared by the session (one per dialect)."""
    url = _new_database_url(request, tmp_path_factory.mktemp(request.param))
    upgrade_database(url)
    return url


@pytest.fixture(params=DIALECTS)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database with no schema, for tests that migrate it themselves."""
    return _new_database_url(request, tmp_path)


@pytest.fixture
def db_engine(database_url: str) -> Iterator[Engine]:
    """An engine on the shared database, disposed after the test so PostgreSQL can drop it."""
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def _full_verdict(job_id: str | None = None, engine_version: int = 1, **overrides: object) -> VerdictRecord:
    """A verdict that exercises every column and child table; ``job_id`` is unique unless given."""
    record = VerdictRecord(
        job_id=job_id or f"job-{uuid.uuid4().hex}",
        source="kafka",
        media_uri="file:///media/clip.mp4",
        status="ok",
        engine=EngineIdentity("sd2-vit-tiny", engine_version, "ab" * 32),
        media_sha256="cd" * 32,
        media_type="video",
        label="fake",
        p_fake=0.8125,
        class_probs={"real": 0.1875, "synthetic": 0.5, "tampered": 0.3125},
        threshold=0.5,
        aggregation="track_max",
        frames_requested=16,
        frames_sampled=2,
        container="mov,mp4,m4a,3gp,3g2,mj2",
        codec="h264",
        width=1920,
        height=1080,
        fps=29.97,
        duration_s=12.5,
        size_bytes=5_000_000_000,
        timings_ms={"decode": 12.5, "infer": 3.25},
        metadata={"uploader": "u-1", "tags": ["a", "b"], "nested": {"n": 1}},
        frames=(
            FrameScoreRecord(
                0, 0.75, pts_s=0.0, face_index=0, track_id=7, box=(1.5, 2.0, 101.5, 130.0), face_confidence=0.99
            ),
            FrameScoreRecord(0, 0.25, pts_s=0.0, face_index=1, track_id=8, box=(200.0, 20.0, 260.0, 90.0)),
            FrameScoreRecord(15, 0.875, pts_s=0.5),
        ),
        tracks=(TrackSummaryRecord(7, 2, 0.8125, 0, 15), TrackSummaryRecord(8, 1, 0.25, 0, 0)),
        masks=(MaskRecord(15, b"\x89PNG\r\n\x1a\n\x00\x00\xff", 224, 224, track_id=7), MaskRecord(0, b"\x00", 2, 2)),
    )
    return replace(record, **overrides)


@pytest.fixture
def make_verdict() -> Callable[..., VerdictRecord]:
    """Builds full verdicts: ``make_verdict(job_id=None, engine_version=1, **field_overrides)``."""
    return _full_verdict
