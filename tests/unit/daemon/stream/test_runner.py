"""The pipeline loop over the Kafka source, with a consumer that plays the broker: back-pressure pauses the
partitions, commits wait for the lowest unfinished offset, a revocation hands back what is done, a drain
releases what no stage started."""

from __future__ import annotations

import collections
from types import SimpleNamespace

import pytest
from kafka import TopicPartition

from deepsift.daemon.broker.source import KafkaSource
from deepsift.daemon.engine_watch import FaceDetectors
from deepsift.daemon.settings import Settings
from deepsift.daemon.stream.health import Health
from deepsift.daemon.stream.metrics import StreamMetrics
from deepsift.daemon.stream.runner import Lifecycle, PipelineLoop, Services, Watch
from deepsift.daemon.stream.sink import NoSink
from deepsift.daemon.stream.work import Completion

TP = TopicPartition("jobs", 0)


class FakeConsumer:
    """Serves records of one partition in order, honours pause, records commits."""

    def __init__(self, n: int) -> None:
        self.records = collections.deque(
            SimpleNamespace(topic="jobs", partition=0, offset=i, key=None, value=b"{}", timestamp=0) for i in range(n)
        )
        self.total = n
        self._paused: set[TopicPartition] = set()
        self.commits: list[dict[tuple[str, int], int]] = []

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def pause(self, *tps: TopicPartition) -> None:
        self._paused |= set(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self._paused -= set(tps)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def poll(self, timeout_ms: int, max_records: int) -> dict:
        if TP in self._paused or not self.records:
            return {}
        return {TP: [self.records.popleft() for _ in range(min(max_records, len(self.records)))]}

    def commit(self, offsets: dict, timeout_ms: int) -> None:
        self.commits.append({(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items()})

    def highwater(self, tp: TopicPartition) -> int:
        return self.total


def _loop(settings: Settings, health: Health) -> PipelineLoop:
    """A loop over a Kafka source whose consumer each test attaches (``_attach``); no stage runs."""
    metrics = StreamMetrics()
    services = Services(settings, None, None, NoSink(), health, metrics, Lifecycle(), None, FaceDetectors)  # type: ignore[arg-type]
    source = KafkaSource(settings, health, metrics, Watch(health, metrics))
    loop = PipelineLoop(services, source)
    source._collect = loop._collect  # what open() wires: a revocation first collects finished jobs
    source.assigned({("jobs", 0)})
    return loop


def _attach(daemon: PipelineLoop, consumer: FakeConsumer) -> FakeConsumer:
    daemon.source.consumer = consumer  # as open() would, without subscribing
    return consumer


@pytest.fixture
def daemon() -> PipelineLoop:
    return _loop(Settings(max_in_flight=4, prefetch=1), Health())


def _finish(daemon: PipelineLoop, *offsets: int) -> None:
    """Play the stages: take these messages off the prepare queue and report them stored."""
    queued = {e.ticket.offset: e for e in list(daemon.prepare_q.queue)}
    for offset in offsets:
        envelope = queued[offset]
        daemon.prepare_q.queue.remove(envelope)
        daemon.done_q.put(Completion(envelope.ticket, f"job-{offset}", "ok", None, None))


def test_a_full_pipeline_pauses_the_partitions_and_holds_no_more_than_max_in_flight(daemon):
    # Given no stage is taking work, and 20 messages are waiting
    consumer = _attach(daemon, FakeConsumer(20))
    # When the loop turns many times
    for _ in range(10):
        daemon._turn()
    # Then only max_in_flight messages were taken, and the partition is paused
    assert daemon.source.ledger.in_flight() == 4 and daemon.prepare_q.qsize() == 4 and not daemon.backlog
    assert consumer.paused() == {TP} and len(consumer.records) == 16
    assert daemon.services.metrics.paused._value.get() == 1


def test_commits_wait_for_the_lowest_unfinished_offset_then_the_partition_resumes(daemon):
    consumer = _attach(daemon, FakeConsumer(20))
    daemon._turn()
    daemon._turn()
    # When offsets 1..3 finish before 0
    _finish(daemon, 1, 2, 3)
    daemon._turn()
    # Then the commit stays at 0 (nothing below 0 to acknowledge)
    assert consumer.commits[-1] == {("jobs", 0): 0}
    # When 0 finishes, everything up to 3 is committed and the pipeline takes work again
    _finish(daemon, 0)
    daemon._turn()
    assert consumer.commits[-1] == {("jobs", 0): 4}
    assert consumer.paused() == set()
    assert daemon.services.metrics.jobs.labels(outcome="ok")._value.get() == 4


def test_a_revocation_hands_back_what_is_finished_and_a_lost_partition_is_forgotten(daemon):
    _attach(daemon, FakeConsumer(3))
    daemon._turn()
    _finish(daemon, 0)
    # When a rebalance starts, the finished offset is handed to the listener to commit
    assert daemon.source.revoking({("jobs", 0)}) == {("jobs", 0): 1}
    # When the partition goes to another consumer, late completions for it are not counted
    daemon.source.assigned(set())
    _finish(daemon, 1)
    daemon._collect()
    assert daemon.source.ledger.in_flight() == 0 and daemon.services.metrics.jobs.labels(outcome="ok")._value.get() == 1


def test_partitions_kept_paused_across_a_rebalance_are_resumed_when_there_is_room(daemon):
    consumer = _attach(daemon, FakeConsumer(3))
    consumer.pause(TP)  # the client keeps the paused flag of a partition it keeps
    daemon._turn()
    assert consumer.paused() == set() and daemon.source.ledger.in_flight() == 3


def test_a_drain_releases_queued_jobs_and_waits_only_for_started_ones(daemon):
    consumer = _attach(daemon, FakeConsumer(6))
    daemon._turn()
    started = daemon.prepare_q.get_nowait()  # a prepare worker took offset 0
    released = daemon._release_queued()
    assert [e.ticket.offset for e in released] == [1, 2, 3]
    assert daemon._started(released) == 1
    daemon.done_q.put(Completion(started.ticket, "job-0", "ok", None, None))
    daemon._collect()
    assert daemon._started(released) == 0
    daemon.source.commit(force=True)
    assert consumer.commits[-1] == {("jobs", 0): 1}  # the released ones stay uncommitted: delivered again


def test_a_stalled_pipeline_stops_the_watchdog_and_liveness_until_a_job_finishes(monkeypatch):
    # Given a daemon whose stall timeout is short, with jobs taken but no stage finishing them (a hung decoder)
    import time

    from deepsift.daemon import notify

    pings: list[float] = []
    monkeypatch.setattr(notify, "notify_watchdog", lambda: pings.append(time.monotonic()))
    settings = Settings(max_in_flight=4, prefetch=1, stall_timeout_s=0.2)
    health = Health(liveness_timeout_s=0.1)
    daemon = _loop(settings, health)
    _attach(daemon, FakeConsumer(3))
    daemon._turn()
    assert pings and daemon.source.ledger.in_flight() == 3
    # When no job finishes for longer than the stall timeout
    time.sleep(0.3)
    before = len(pings)
    daemon._turn()
    time.sleep(0.15)
    daemon._turn()
    # Then the heartbeats stop and liveness fails
    assert len(pings) == before
    assert not health.live()[0]
    # And when a job finishes again, the heartbeats and liveness come back
    _finish(daemon, 0)
    daemon._turn()
    daemon._turn()
    assert len(pings) > before and health.live()[0]


def test_the_attempt_sweep_is_given_only_offsets_this_daemon_committed_on_partitions_it_owns(daemon):
    # Given three jobs taken, none finished: nothing committed, nothing to forget
    consumer = _attach(daemon, FakeConsumer(3))
    daemon._turn()
    assert daemon.source.positions() == {}
    # When two finish and are committed; Then the rows below offset 2 may go
    _finish(daemon, 0, 1)
    daemon._turn()
    assert consumer.commits[-1] == {("jobs", 0): 2} and daemon.source.positions() == {("jobs", 0): 2}
    # and once the partition belongs to another daemon, its rows are that daemon's to forget
    daemon.source.assigned(set())
    assert daemon.source.positions() == {}
