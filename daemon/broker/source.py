"""The ``kafka`` job source of ``daemon run``: a consumer-group member whose offsets move only after verdicts.

An acknowledged job marks its offset finished in the ``OffsetLedger``; ``commit`` commits, per partition,
up to the lowest offset whose verdict is not yet stored, so everything below a committed offset is in SQL.
Revoked partitions are committed in the rebalance listener (kafka-python's IO thread calls it while the loop
runs; the ledger locks itself). ``pause`` pauses every assigned partition and polling goes on, so the member
stays in its group while the pipeline catches up. The consumer is used by the loop's thread only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError, RebalanceInProgressError

from deepsift.daemon import notify
from deepsift.daemon.broker.client import COMMIT_TIMEOUT_MS, PartitionListener, kafka_call, make_consumer, to_offsets
from deepsift.daemon.settings import Settings
from deepsift.daemon.stream.health import Health
from deepsift.daemon.stream.metrics import StreamMetrics
from deepsift.daemon.stream.offsets import OffsetLedger, PartitionKey, Ticket
from deepsift.daemon.stream.retry import Abandoned, Backoff, DependencyWatch, retry_forever
from deepsift.daemon.stream.work import Completion, Envelope

log = structlog.get_logger(__name__)

POLL_TIMEOUT_MS = 100
REBALANCE_COMMIT_DELAY_S = 0.5


class KafkaSource:
    """Jobs from the jobs topic, acknowledged by offset commits after their verdicts are in SQL."""

    name = "kafka"
    redelivers = True

    def __init__(
        self,
        settings: Settings,
        health: Health,
        metrics: StreamMetrics,
        watch: DependencyWatch,
        connect: Callable[[], KafkaConsumer] | None = None,
    ) -> None:
        self.settings = settings
        self.health = health
        self.metrics = metrics
        self.watch = watch
        self.ledger = OffsetLedger()
        self._connect = connect or (lambda: kafka_call(make_consumer, settings, settings.max_in_flight))
        self.consumer: KafkaConsumer | None = None
        self._collect: Callable[[], None] = lambda: None
        self._next_commit = 0.0
        self._kafka_delays = Backoff().delays()

    def open(self, stop: threading.Event, collect: Callable[[], None]) -> bool:
        """Join the group (waiting for the broker) and subscribe; False when asked to stop meanwhile."""
        notify.notify_status("joining the consumer group")
        self._collect = collect
        try:
            self.consumer = retry_forever(self._connect, dependency="kafka", stop=stop, watch=self.watch)
        except Abandoned:
            return False
        listener = PartitionListener(self.consumer, self.assigned, self.revoking, self.ledger.committed)
        self.consumer.subscribe([self.settings.kafka_topic], listener=listener)
        return True

    def take(self, room: int) -> list[Envelope]:
        """Poll up to ``room`` messages (waits at most ``POLL_TIMEOUT_MS``; paused partitions give none)."""
        assert self.consumer is not None
        try:
            polled = self.consumer.poll(timeout_ms=POLL_TIMEOUT_MS, max_records=max(1, room))
        except KafkaError as e:
            self.watch.dependency_failed("kafka", str(e))
            log.warning("poll_failed", error=repr(e))
            time.sleep(next(self._kafka_delays))
            return []
        self.watch.dependency_ok("kafka")
        taken = []
        for records in polled.values():
            for record in records:
                ticket = self.ledger.take(record.topic, record.partition, record.offset)
                if ticket is not None:  # None: fetched before its partition was revoked
                    submitted = record.timestamp if record.timestamp is not None and record.timestamp > 0 else None
                    taken.append(Envelope(ticket, record.key, record.value, submitted, time.monotonic()))
        return taken

    def keep_alive(self) -> None:
        """Poll while paused, so the member stays in its group; anything returned is left (not taken)."""
        assert self.consumer is not None
        try:
            self.consumer.poll(timeout_ms=POLL_TIMEOUT_MS, max_records=1)
        except KafkaError as e:
            log.warning("poll_failed", error=repr(e))
            time.sleep(next(self._kafka_delays))

    def acknowledge(self, done: Completion) -> bool:
        return self.ledger.finish(done.ticket)

    def commit(self, force: bool = False) -> None:
        """Commit every partition whose committable offset moved; back off while the broker refuses."""
        assert self.consumer is not None
        offsets = self.ledger.ready()
        if not offsets or (not force and time.monotonic() < self._next_commit):
            return
        started = time.perf_counter()
        try:
            self.consumer.commit(to_offsets(offsets), timeout_ms=COMMIT_TIMEOUT_MS)
        except (CommitFailedError, RebalanceInProgressError) as e:  # not an outage: retried after the rebalance
            self.metrics.commits.labels(result="rebalancing").inc()
            self._next_commit = time.monotonic() + REBALANCE_COMMIT_DELAY_S
            log.info("commit_deferred_rebalance", error=type(e).__name__)
            return
        except KafkaError as e:
            self.metrics.commits.labels(result="failed").inc()
            self.watch.dependency_failed("kafka", f"offset commit failed: {e}")
            self._next_commit = time.monotonic() + next(self._kafka_delays)
            log.warning("commit_failed", error=repr(e))
            return
        self.ledger.committed(offsets)
        self.watch.dependency_ok("kafka")
        self._kafka_delays = Backoff().delays()
        self.metrics.commits.labels(result="ok").inc()
        self.metrics.stage_seconds.labels(stage="commit").observe(time.perf_counter() - started)
        log.debug("committed", offsets={f"{t}/{p}": o for (t, p), o in offsets.items()})

    def owns(self, ticket: Ticket) -> bool:
        return self.ledger.is_current(ticket)

    def in_flight(self) -> int:
        return self.ledger.in_flight()

    def pause(self) -> None:
        assert self.consumer is not None
        paused = self.consumer.paused()
        running = self.consumer.assignment() - paused
        if running:
            self.consumer.pause(*running)
            self.metrics.paused.set(len(paused | running))
            log.debug("partitions_paused", in_flight=self.in_flight())

    def resume(self) -> None:
        assert self.consumer is not None
        paused = self.consumer.paused()
        if paused:
            self.consumer.resume(*paused)
            self.metrics.paused.set(0)
            log.debug("partitions_resumed", in_flight=self.in_flight())

    def paused(self) -> bool:
        return self.consumer is not None and bool(self.consumer.paused())

    def exhausted(self) -> bool:
        return False

    def positions(self) -> dict[PartitionKey, int]:
        """What this member committed, per partition it owns: no message below is delivered to the group again."""
        ledger = self.ledger
        return {key: offset for key in ledger.assigned() if (offset := ledger.last_committed(key)) is not None}

    def observe(self) -> None:
        """Partition and lag gauges, and the service status line."""
        self.metrics.assigned.set(len(self.ledger.assigned()))
        for topic, partition in self.ledger.assigned():
            self._observe_lag(topic, partition)
        notify.notify_status(f"{len(self.ledger.assigned())} partitions, {self.in_flight()} jobs in flight")

    def _observe_lag(self, topic: str, partition: int) -> None:
        assert self.consumer is not None
        try:
            end = self.consumer.highwater(TopicPartition(topic, partition))
        except KafkaError:
            return
        committed = self.ledger.last_committed((topic, partition))
        if end is not None and committed is not None:
            self.metrics.lag.labels(topic=topic, partition=str(partition)).set(max(0, end - committed))

    def close(self) -> None:
        if self.consumer is None:
            return
        try:
            self.consumer.close(autocommit=False)
        except Exception as e:  # leaving the group is a courtesy; the session timeout does it anyway
            log.warning("consumer_close_failed", error=repr(e))

    # --- rebalances: kafka-python's IO thread calls these while the loop runs (the ledger locks itself) ---

    def assigned(self, keys: set[PartitionKey]) -> None:
        """The whole new assignment: partitions kept go on as they were, those given up are forgotten."""
        dropped = self.ledger.assign(keys)  # the loop's backlog sheds their messages as it is fed
        for topic, partition in dropped:
            self.metrics.forget_partition(topic, partition)
        self.health.joined(True)
        log.info("partitions_assigned", partitions=names(keys), given_up=names(dropped))

    def revoking(self, keys: set[PartitionKey]) -> dict[PartitionKey, int]:
        """Before a rebalance: what is finished on these partitions, for the listener to commit."""
        self._collect()
        offsets = self.ledger.revoking(keys)
        if keys:
            commit = {f"{t}/{p}": o for (t, p), o in offsets.items()}
            log.info("partitions_revoked", partitions=names(keys), commit=commit)
        return offsets


def names(keys: set[PartitionKey]) -> list[str]:
    return sorted(f"{topic}/{partition}" for topic, partition in keys)
