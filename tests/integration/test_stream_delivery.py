"""`daemon run` end to end on a real Kafka-protocol broker and real databases: exactly one verdict per job.

Each test runs the console script as subprocesses in a consumer group of its own, on topics of its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAEMON = Path(sys.executable).parent / "daemon"

IMAGES = [f"image_{i}.png" for i in range(8)]


def _submit(stream, *paths: str, metadata: dict) -> list[str]:
    """Job ids printed by `daemon submit` for these media files."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPSIFT_")}
    env.update(stream.settings)
    files = [str(stream.media / p) for p in paths]
    result = subprocess.run(
        [str(DAEMON), "submit", "--metadata", json.dumps(metadata), *files],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.split()


def _committed_total(stream) -> int:
    """Messages committed by the group, over all partitions (offsets start at 0 on a fresh topic)."""
    return sum(o or 0 for o in stream.broker.committed(stream.group, stream.topic, stream.partitions).values())


def _video_jobs(stream, n: int) -> tuple[list[str], list[bytes]]:
    jobs = [stream.job("clip.mp4", i, frames=16) for i in range(n)]
    return [job_id for job_id, _ in jobs], [value for _, value in jobs]


def test_n_jobs_become_exactly_n_verdicts_and_redelivery_adds_none(database_url, stream_setup, start_daemon):
    # Given a daemon in its own consumer group
    stream = stream_setup(database_url)
    daemon = start_daemon(stream.settings)
    daemon.wait_ready()
    assert daemon.get("/healthz/live")[0] == 200
    # When `daemon submit` puts 9 jobs (8 images, 1 clip) on the topic
    job_ids = _submit(stream, *IMAGES, "clip.mp4", metadata={"batch": "b1"})
    assert len(job_ids) == len(set(job_ids)) == 9
    # Then exactly 9 verdicts are stored, all ok, with the metadata echoed, and all 9 offsets are committed
    stream.wait(lambda: len(stream.verdicts(job_ids)) == 9, 120, "9 verdicts")
    verdicts = stream.verdicts(job_ids)
    assert sorted(v["job_id"] for v in verdicts) == sorted(job_ids)
    assert {v["status"] for v in verdicts} == {"ok"}
    assert all(v["job_metadata"] == {"batch": "b1"} for v in verdicts)
    assert sorted(v["frames_sampled"] for v in verdicts) == [1] * 8 + [8]
    stream.wait(lambda: _committed_total(stream) == 9, 60, "9 committed offsets")
    # When three of the same messages are delivered again
    again = [stream.broker.read(stream.topic, 9)[i].value for i in range(3)]
    stream.broker.produce(stream.topic, again)
    # Then they are recognised as judged and skipped: still 9 verdicts, 12 offsets committed
    stream.wait(lambda: daemon.metric("deepsift_jobs_total", outcome="skipped") == 3, 60, "3 skipped jobs")
    stream.wait(lambda: _committed_total(stream) == 12, 60, "12 committed offsets")
    assert len(stream.verdicts(job_ids)) == 9
    assert daemon.metric("deepsift_jobs_total", outcome="ok") == 9
    # and every job has a result event (the skipped ones again: at least once)
    events = Counter(json.loads(r.value)["job_id"] for r in stream.broker.read(stream.verdict_topic, 12))
    assert set(events) == set(job_ids) and sum(events.values()) == 12
    # and a SIGTERM ends it cleanly
    daemon.stop(signal.SIGTERM)
    assert daemon.wait(timeout=40) == 0


def test_two_daemons_split_the_partitions_and_produce_exactly_n(postgres_url, stream_setup, start_daemon):
    # Given one daemon working through a steady stream of jobs
    stream = stream_setup(postgres_url)
    first = start_daemon(stream.settings)
    first.wait_ready()
    job_ids: list[str] = []
    stop = threading.Event()

    def produce(n: int) -> None:
        start = len(job_ids)
        jobs = [stream.job("clip.mp4" if i % 3 == 0 else IMAGES[i % 8], i) for i in range(start, start + n)]
        stream.broker.produce(stream.topic, [value for _, value in jobs], partitions=stream.partitions)
        job_ids.extend(job_id for job_id, _ in jobs)

    def keep_producing() -> None:
        while not stop.wait(0.3):
            produce(stream.partitions)

    producer = threading.Thread(target=keep_producing)
    producer.start()
    # When a second daemon joins the group mid-stream (the first one's partitions are revoked under it)
    second = start_daemon(stream.settings)
    daemons = [first, second]
    try:
        second.wait_ready()
        stream.wait(lambda: all(_current_partitions(d) for d in daemons), 60, "both daemons to own partitions")
    finally:
        stop.set()
        producer.join()
    produce(24)  # and more jobs, spread over every partition, arrive after the split
    # Then together they store exactly one verdict per job and commit every offset
    n = len(job_ids)
    stream.wait(lambda: len(stream.verdicts(job_ids)) >= n, 120, f"{n} verdicts")
    stream.wait(lambda: _committed_total(stream) == n, 60, f"{n} committed offsets")
    assert Counter(v["job_id"] for v in stream.verdicts(job_ids)) == dict.fromkeys(job_ids, 1)
    # each owns a disjoint half of the partitions, and both judged jobs
    owned = [_current_partitions(d) for d in daemons]
    assert owned[0].isdisjoint(owned[1]) and len(owned[0] | owned[1]) == stream.partitions, owned
    assert first.events("partitions_revoked"), "the first daemon gave up partitions when the second joined"
    assert all(d.metric("deepsift_jobs_total", outcome="ok") > 0 for d in daemons)
    for daemon in daemons:
        daemon.stop(signal.SIGTERM)
    assert [d.wait(timeout=40) for d in daemons] == [0, 0]


def _current_partitions(daemon) -> set[str]:
    """The partitions of the daemon's latest assignment (empty after a revocation)."""
    events = [e for e in daemon.events("partitions_assigned") + daemon.events("partitions_revoked")]
    events.sort(key=lambda e: e["timestamp"])
    if not events or events[-1]["event"] != "partitions_assigned":
        return set()
    return set(events[-1]["partitions"])


def test_kill_9_mid_batch_then_restart_gives_exactly_n(postgres_url, stream_setup, start_daemon):
    # Given a daemon working through 24 video jobs
    stream = stream_setup(postgres_url, DEEPSIFT_BATCH_MAX_FRAMES="64")
    job_ids, values = _video_jobs(stream, 24)
    first = start_daemon(stream.settings)
    first.wait_ready()
    stream.broker.produce(stream.topic, values, partitions=stream.partitions)
    # When it is killed with SIGKILL after storing a few verdicts, in the middle of the rest
    stream.wait(lambda: len(stream.verdicts(job_ids)) >= 3, 120, "the first verdicts")
    first.stop(signal.SIGKILL)
    first.wait(timeout=30)
    stored_at_kill = len(stream.verdicts(job_ids))
    assert stored_at_kill < 24, "the daemon finished before the kill; the test needs slower jobs"
    # and a new daemon takes over the group
    second = start_daemon(stream.settings)
    # Then every job has exactly one verdict: none lost, none doubled
    stream.wait(lambda: len(stream.verdicts(job_ids)) >= 24, 180, "24 verdicts after the restart")
    stream.wait(lambda: _committed_total(stream) == 24, 60, "24 committed offsets")
    counts = Counter(v["job_id"] for v in stream.verdicts(job_ids))
    assert counts == dict.fromkeys(job_ids, 1)
    assert {v["status"] for v in stream.verdicts(job_ids)} == {"ok"}
    second.stop(signal.SIGTERM)
    assert second.wait(timeout=40) == 0


def test_sigterm_during_work_exits_within_the_deadline_and_commits_match_verdicts(
    postgres_url, stream_setup, start_daemon
):
    # Given a daemon busy with 40 video jobs
    deadline_s = 20
    stream = stream_setup(postgres_url, DEEPSIFT_DRAIN_DEADLINE_S=str(deadline_s))
    job_ids, values = _video_jobs(stream, 40)
    daemon = start_daemon(stream.settings)
    daemon.wait_ready()
    placed = stream.broker.produce(stream.topic, values, partitions=stream.partitions)
    stream.wait(lambda: len(stream.verdicts(job_ids)) >= 3, 120, "the first verdicts")
    # When it gets SIGTERM in the middle of the work
    signalled = time.monotonic()
    daemon.stop(signal.SIGTERM)
    # Then it exits 0 within the drain deadline (plus the time to leave the group)
    assert daemon.wait(timeout=deadline_s + 15) == 0
    assert time.monotonic() - signalled < deadline_s + 15
    assert daemon.events("drain_finished")[-1]["unfinished"] == 0
    # and the committed offsets cover exactly the jobs whose verdicts are stored
    committed = stream.broker.committed(stream.group, stream.topic, stream.partitions)
    below_commit = {job_id for job_id, (p, o) in zip(job_ids, placed, strict=True) if o < (committed[p] or 0)}
    stored = {v["job_id"] for v in stream.verdicts(job_ids)}
    assert stored == below_commit
    assert 3 <= len(stored) < 40
