"""Small builders for stream records, shared by the stream unit tests."""

from __future__ import annotations

import time

import numpy as np
import pytest

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
