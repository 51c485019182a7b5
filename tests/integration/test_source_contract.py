"""The ``JobSource`` contract, for every registered source: what the pipeline loop relies on, on the real thing.

Each source in ``SOURCES`` is built the way the daemon builds it (``SOURCES.get(name)(SourceRequest(...))``)
by a harness that knows how to give it jobs: files in a folder, or job messages on a fresh topic of the test
broker. A source added to the registry without a harness here fails, so it cannot go untested.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from deepsift.daemon.settings import Settings
from deepsift.daemon.sources.base import SOURCES, JobSource, SourceRequest
from deepsift.daemon.stream.health import Health
from deepsift.daemon.stream.jobs import encode_job, new_job
from deepsift.daemon.stream.metrics import StreamMetrics
from deepsift.daemon.stream.runner import Watch
from deepsift.daemon.stream.work import Completion, Envelope

pytestmark = [pytest.mark.integration]

N = 3
DEADLINE_S = 30.0  # for deliveries that must come (a Kafka member joins its group first)
IDLE_TAKES = 10  # takes that must hand out nothing (a Kafka take polls for 100 ms)


@dataclass
class Harness:
    """Makes a source over known jobs; ``identify`` names a delivery's job, ``add`` makes more jobs deliverable."""

    make: Callable[[], JobSource]
    identify: Callable[[Envelope], str]
    jobs: list[str]
    add: Callable[[int], list[str]] = lambda n: []
    runs_out: bool = False  # exhausted once everything is handed out
    opened: list[JobSource] = field(default_factory=list)

    def open(self) -> JobSource:
        source = self.make()
        self.opened.append(source)
        assert source.open(threading.Event(), lambda: None) is True
        return source


def _request(settings: Settings, paths: tuple[Path, ...] = ()) -> SourceRequest:
    health, metrics = Health(), StreamMetrics()
    return SourceRequest(settings, health, metrics, Watch(health, metrics), paths)


def files_harness(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    folder = tmp_path / "uploads"
    folder.mkdir()
    jobs = [f"upload_{i}.jpg" for i in range(N)]
    for name in jobs:
        (folder / name).write_bytes(b"not read by the source")
    (folder / "notes.txt").write_text("no media suffix: never a delivery")
    make = lambda: SOURCES.get("files")(_request(Settings(), (folder,)))  # noqa: E731
    return Harness(make, lambda envelope: envelope.entry.path.name, jobs, runs_out=True)


def kafka_harness(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    broker = request.getfixturevalue("kafka_broker")
    topic, group = broker.create_topic(1, "contract"), f"g{uuid.uuid4().hex[:10]}"
    settings = Settings(
        kafka_bootstrap_servers=broker.bootstrap,
        kafka_topic=topic,
        kafka_group_id=group,
        kafka_session_timeout_ms=3000,
        kafka_heartbeat_interval_ms=500,
    )
    made = 0

    def add(n: int) -> list[str]:
        nonlocal made
        ids = [f"{group}-{i}" for i in range(made, made + n)]
        made += n
        broker.produce(topic, [encode_job(new_job(job_id, f"file:///media/{job_id}.jpg")) for job_id in ids])
        return ids

    make = lambda: SOURCES.get("kafka")(_request(settings))  # noqa: E731
    return Harness(make, lambda envelope: json.loads(envelope.value)["job_id"], add(N), add=add)


HARNESSES: dict[str, Callable[[pytest.FixtureRequest, Path], Harness]] = {
    "files": files_harness,
    "kafka": kafka_harness,
}


@pytest.fixture(params=SOURCES.names())
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param not in HARNESSES:
        pytest.fail(f"job source {request.param!r} has no harness in {__name__}: add one to test it")
    made = HARNESSES[request.param](request, tmp_path)
    yield made
    for source in made.opened:  # a test that failed half-way leaves no member in the group
        source.close()


def take_until(source: JobSource, room: int, count: int) -> list[Envelope]:
    """Take ``count`` deliveries, ``room`` at a time; fails when one take hands out more or they do not come."""
    taken: list[Envelope] = []
    deadline = time.monotonic() + DEADLINE_S
    while len(taken) < count:
        batch = source.take(room)
        assert len(batch) <= room, f"take({room}) handed out {len(batch)}"
        taken += batch
        if time.monotonic() > deadline:
            pytest.fail(f"{len(taken)} of {count} deliveries after {DEADLINE_S:.0f} s")
    return taken


def take_nothing(source: JobSource, room: int = 4) -> None:
    for _ in range(IDLE_TAKES):
        assert source.take(room) == []


def test_each_job_comes_once_within_room_and_none_while_paused(harness: Harness) -> None:
    # Given a source over N known jobs, opened
    source = harness.open()
    assert not source.paused()
    # When one delivery is taken, the source paused, and more jobs made available
    first = take_until(source, 1, 1)
    source.pause()
    jobs = harness.jobs + harness.add(2)
    # Then, while paused, nothing more is handed out, although jobs are waiting
    assert source.paused() and len(jobs) > len(first)
    take_nothing(source)
    source.keep_alive()
    assert source.in_flight() == 1
    # When resumed, the rest come, never more than room per take, and then nothing more
    source.resume()
    assert not source.paused()
    taken = first + take_until(source, 2, len(jobs) - len(first))
    take_nothing(source)
    # Then every job was handed out exactly once, and all are in flight and owned
    assert Counter(harness.identify(e) for e in taken) == dict.fromkeys(jobs, 1)
    assert len({e.ticket for e in taken}) == len(jobs)
    assert source.in_flight() == len(jobs)
    assert all(source.owns(e.ticket) for e in taken)
    assert source.exhausted() is harness.runs_out
    source.close()


def test_acknowledged_jobs_are_committed_and_only_the_rest_come_again(harness: Harness) -> None:
    # Given a source that handed out its N jobs
    source = harness.open()
    taken = sorted(take_until(source, 2, N), key=lambda e: (e.ticket.partition, e.ticket.offset))
    # When all but the last are acknowledged, one by one, and committed
    for left, envelope in enumerate(taken[:-1], start=1):
        assert source.acknowledge(Completion(envelope.ticket, harness.identify(envelope), "ok", None, None)) is True
        assert source.in_flight() == N - left
    source.commit(force=True)
    # Then only the last is in flight, and no committed position passes it or stops short of the acknowledged
    assert source.in_flight() == 1 and source.owns(taken[-1].ticket)
    for key, position in source.positions().items():
        assert all(e.ticket.offset < position for e in taken[:-1] if e.ticket.key == key)
        assert all(e.ticket.offset >= position for e in taken[-1:] if e.ticket.key == key)
    assert bool(source.positions()) is source.redelivers
    assert source.exhausted() is harness.runs_out
    source.close()
    # When the source is made again over the same jobs (a restarted daemon: a new member of the same group)
    again = harness.open()
    expected = [harness.identify(taken[-1])] if source.redelivers else harness.jobs
    redelivered = take_until(again, 2, len(expected))
    take_nothing(again)
    # Then a source that redelivers hands out only the unacknowledged job; one that does not, every job again
    assert sorted(harness.identify(e) for e in redelivered) == sorted(expected)
    again.close()
