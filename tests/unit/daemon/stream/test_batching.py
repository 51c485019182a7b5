"""Engine micro-batches across jobs: bounded by frames and by waiting time, a job never split."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import replace

import pytest

from deepsift.daemon.pipeline import Outcome
from deepsift.daemon.stream.batching import MicroBatcher, judge_batch
from deepsift.daemon.stream.metrics import StreamMetrics
from deepsift.engines.backends import load_engine


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
        make_work(0, 1, outcome=Outcome.error("not_media", "text")),
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


class _CountingBackend:
    """Records the size of each engine call."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, []

    def run(self, pixels, outputs):
        self.calls.append(len(pixels))
        return self.inner.run(pixels, outputs)


def _version(engine, version: int, threshold: float):
    manifest = engine.manifest.model_copy(update={"version": version, "threshold": threshold})
    return replace(engine, manifest=manifest, backend=_CountingBackend(engine.backend))


def _for(work, engine):
    return replace(work, prepared=replace(work.prepared, engine=engine))


def test_a_batch_across_an_engine_switch_scores_each_job_with_its_own_engine(engine, make_work):
    # Given jobs prepared for v1 and for v2 (a switch happened while they waited), and v2 serving
    v1, v2 = _version(engine, 1, threshold=1.0), _version(engine, 2, threshold=0.0)
    size = engine.manifest.input.size
    batch = [
        _for(make_work(3, 0, size=size), v1),
        _for(make_work(2, 1, size=size), v2),
        _for(make_work(1, 2, size=size), v1),
        _for(make_work(0, 3, outcome=Outcome.error("not_media", "text")), v1),
        make_work(0, 4),  # judged before
    ]
    # When the batch is judged
    judged = judge_batch(v2, batch, StreamMetrics())
    # Then each engine ran once, on its own jobs' frames
    assert v1.backend.calls == [4] and v2.backend.calls == [2]
    # and each verdict names the engine that made it, with that engine's threshold
    records = [j.record for j in judged]
    assert [r.engine.version if r else None for r in records] == [1, 2, 1, 1, None]
    real, fake = engine.manifest.task.real_class, engine.manifest.task.positive_class
    assert [r.label for r in records[:3]] == [real, fake, real]
    assert [len(r.frames) for r in records[:3]] == [3, 2, 1]


def test_gpu_and_host_pixels_of_one_engine_go_in_separate_calls(engine, make_work):
    # Given one engine's jobs, one decoded on the host (numpy) and one whose pixels are a tensor (GPU decode)
    import torch

    counting = replace(engine, backend=_CountingBackend(engine.backend))
    size = engine.manifest.input.size
    host, device = make_work(3, 0, size=size), make_work(2, 1, size=size)
    device = replace(device, prepared=replace(device.prepared, pixels=torch.from_numpy(device.prepared.pixels)))
    # When they are judged in one batch
    judged = judge_batch(counting, [host, device], StreamMetrics())
    # Then each placement is one engine call, and both jobs get their own scores
    assert sorted(counting.backend.calls) == [2, 3]
    assert [(j.record.status, len(j.record.frames)) for j in judged] == [("ok", 3), ("ok", 2)]


def test_a_job_whose_verdict_cannot_be_built_gets_an_internal_error_and_the_batch_goes_on(engine, make_work):
    # Given a batch where one job's regions do not match its pixels (a preparation bug)
    size = engine.manifest.input.size
    broken = make_work(3, 1, size=size)
    broken = replace(broken, prepared=replace(broken.prepared, regions=broken.prepared.regions[:2]))
    batch = [make_work(2, 0, size=size), broken, make_work(1, 2, size=size)]
    # When the batch is judged
    judged = judge_batch(engine, batch, StreamMetrics())
    # Then that job alone is an internal_error verdict that says why; its neighbours are scored
    assert [j.record.status for j in judged] == ["ok", "error", "ok"]
    assert judged[1].record.code == "internal_error" and "ValueError" in judged[1].record.detail
    assert judged[1].record.job_id == "job-1" and judged[1].record.frames == ()


class _Unreadable:
    """Media facts whose every attribute raises: even the error verdict cannot be built from them."""

    def __getattr__(self, name: str):
        raise RuntimeError(f"cannot read {name}")


def test_a_job_whose_error_verdict_cannot_be_built_either_gets_a_bare_one(engine, make_work):
    work = make_work(0, 3, outcome=Outcome.error("not_media", "why"))
    work = replace(work, prepared=replace(work.prepared, facts=_Unreadable()))
    [judged] = judge_batch(engine, [work], StreamMetrics())
    record = judged.record
    assert (record.job_id, record.status, record.code) == ("job-3", "error", "internal_error")
    assert record.media_uri == "file:///m/3.png" and record.engine.name == engine.manifest.name
    assert "cannot read" in record.detail


def test_an_engine_call_that_raises_fails_the_jobs_it_scored_not_the_stage(engine, make_work, monkeypatch):
    # Given inference that raises outright (a bug around the engine calls)
    def broken_infer(*args, **kwargs):
        raise RuntimeError("engine exploded")

    monkeypatch.setattr("deepsift.daemon.stream.batching.infer", broken_infer)
    size = engine.manifest.input.size
    batch = [make_work(2, 0, size=size), make_work(0, 1, outcome=Outcome.error("not_media", "t")), make_work(0, 2)]
    # When a batch is judged
    judged = judge_batch(engine, batch, StreamMetrics())
    # Then the job with pixels gets an inference_failed verdict; the others are as they would be
    assert [(j.record.status, j.record.code) if j.record else None for j in judged] == [
        ("error", "inference_failed"),
        ("error", "not_media"),
        None,
    ]
    assert "engine exploded" in judged[0].record.detail
