"""Engine micro-batches across jobs: bounded by frames and by waiting time, a job never split."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from daemon.stream.batching import MicroBatcher, judge_batch
from daemon.stream.metrics import StreamMetrics
from engines.backends import load_engine


def _queue(*items) -> queue.Queue:
    q: queue.Queue = queue.Queue()
    for item in items:
        q.put(item)
    return q


def test_jobs_waiting_together_share_a_batch_up_to_the_frame_limit(make_work):
    # Given jobs of 8, 8, 32 and 1 frames waiting, and a 40-frame limit
    items = [make_work(8, 0), make_work(8, 1), make_work(32, 2), make_work(1, 3)]
    batcher = MicroBatcher(_queue(*items), max_frames=40, max_wait_s=0.05, stop=threading.Event())
    # Then the first batch stops before the job that would not fit, which starts the next one
    assert [w.frames for w in batcher.next_batch()] == [8, 8]
    assert [w.frames for w in batcher.next_batch()] == [32, 1]


def test_a_job_bigger_than_a_batch_goes_alone_and_unsplit(make_work):
    batcher = MicroBatcher(_queue(make_work(100, 0), make_work(4, 1)), 64, 0.05, threading.Event())
    assert [w.frames for w in batcher.next_batch()] == [100]
    assert [w.frames for w in batcher.next_batch()] == [4]


def test_a_part_full_batch_closes_after_the_wait(make_work):
    inbox = _queue(make_work(4, 0))
    batcher = MicroBatcher(inbox, 64, max_wait_s=0.2, stop=threading.Event())
    started = time.monotonic()
    assert [w.frames for w in batcher.next_batch()] == [4]
    assert 0.15 < time.monotonic() - started < 2.0


def test_the_batcher_ends_when_the_daemon_stops(make_work):
    stop = threading.Event()
    stop.set()
    assert MicroBatcher(_queue(), 64, 0.01, stop).next_batch() is None


@pytest.fixture(scope="module")
def engine(full_frame_store):
    return load_engine(full_frame_store.resolve("tiny-full"))


def test_one_batch_gives_one_verdict_per_job_and_none_for_jobs_judged_before(engine, make_work):
    size = engine.manifest.input.size
    batch = [
        make_work(3, 0, size=size),
        make_work(0, 1, outcome=("error", "not_media", "text")),
        make_work(0, 2),  # judged before
        make_work(2, 3, size=size),
    ]
    metrics = StreamMetrics()
    judged = judge_batch(engine, batch, metrics)
    assert [j.record.status if j.record else None for j in judged] == ["ok", "error", None, "ok"]
    assert [len(j.record.frames) for j in judged if j.record] == [3, 0, 2]
    assert judged[0].record.timings_ms["batch_frames"] == 5 and "infer" in judged[3].record.timings_ms
    assert judged[1].record.code == "not_media"
    assert metrics.batch_frames._sum.get() == 5  # one engine batch of 5 frames
