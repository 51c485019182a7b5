"""Small builders for stream records, shared by the stream unit tests."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine

from deepsift.daemon.db import make_database, upgrade_database
from deepsift.daemon.pipeline import JudgeConfig, MediaJob, PreparedMedia, Region
from deepsift.daemon.stream.offsets import Ticket
from deepsift.daemon.stream.work import Envelope, Work
from deepsift.engines.aggregate import AggregationRule

CONFIG = JudgeConfig(8, AggregationRule.parse("mean"), 0.1, "pyav", 10**8)


def envelope(offset: int = 0, value: bytes | None = b"{}", partition: int = 0) -> Envelope:
    return Envelope(Ticket("jobs", partition, offset, 1), b"key", value, 1_700_000_000_000, time.monotonic())


def work(frames: int = 0, offset: int = 0, outcome: tuple[str, str, str] | None = None, size: int = 64) -> Work:
    """Work for a job with ``frames`` preprocessed frames (none: an outcome, or judged before when no outcome)."""
    job = MediaJob(f"job-{offset}", f"file:///m/{offset}.png", source="kafka")
    if frames:
        pixels = np.zeros((frames, 3, size, size), dtype=np.float32)
        regions = tuple(Region(i, None) for i in range(frames))
        return Work(envelope(offset), job.job_id, CONFIG, PreparedMedia(job, "ab" * 32, None, frames, regions, pixels))
    if outcome:
        return Work(envelope(offset), job.job_id, CONFIG, PreparedMedia(job, None, None, outcome=outcome))
    return Work(envelope(offset), job.job_id, CONFIG, stored_id=99)


@pytest.fixture
def make_work():
    return work


@pytest.fixture
def make_envelope():
    return envelope


@pytest.fixture
def judge_config() -> JudgeConfig:
    return CONFIG


@pytest.fixture(scope="module")
def migrated_file(tmp_path_factory) -> Path:
    """A SQLite database migrated once; each test works on its own copy (``sqlite_database``)."""
    path = tmp_path_factory.mktemp("db") / "template.db"
    upgrade_database(f"sqlite:///{path}")
    return path


@pytest.fixture
def sqlite_database(migrated_file, tmp_path) -> Iterator[Engine]:
    """A real, migrated SQLite database of this test's own."""
    path = tmp_path / "deepsift.db"
    shutil.copyfile(migrated_file, path)
    engine = make_database(f"sqlite:///{path}")
    yield engine
    engine.dispose()
