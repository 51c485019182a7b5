"""``daemon run``: the main loop that feeds the stages from Kafka and commits what they finished.

Threads: the main loop (the only user of the consumer), ``prepare_workers`` prepare threads, one
batching thread (scores every job), one persist thread, the dependency probes (``probes``: readiness sees a
silent database or broker), the attempts sweeper, and the engine watcher, which loads and warms a
promoted engine beside the serving one (prepare workers take the serving engine as they start a job).
Bounded queues link them; when the prepare queue is full or ``max_in_flight`` jobs are uncommitted, the
loop pauses its partitions and keeps polling (so it stays in the group) until the stages catch up.
Memory is bounded by those limits, whatever arrives.

Delivery: an offset is committed only when every job below it has its verdict in SQL (``offsets``);
revoked partitions are committed in the rebalance listener. SIGTERM/SIGINT drain: stop taking jobs,
finish the ones a stage has started, commit, leave the group — within ``drain_deadline_s``; a second
signal stops waiting. Jobs not started or not finished stay uncommitted and are delivered again.

Poison jobs: each delivery a prepare worker starts is counted in SQL (``daemon.attempts``). Messages that
were in flight when a daemon died are prepared one at a time; one whose ``poison_max_attempts`` deliveries
all died is answered ``poison_job``. The ``attempts-sweep`` thread deletes the counts below the offsets this
daemon committed.
"""

from __future__ import annotations

import collections
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

import structlog
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import CommitFailedError, KafkaError, RebalanceInProgressError

from deepsift.daemon import notify
from deepsift.daemon.attempts import JobAttempts, sweep_attempts
from deepsift.daemon.engine_watch import EngineWatcher, FaceDetectors
from deepsift.daemon.repository import VerdictRepository
from deepsift.daemon.runtime import judge_config
from deepsift.daemon.settings import Settings
from deepsift.daemon.stream.batching import MicroBatcher, batch_worker
from deepsift.daemon.stream.consumer import COMMIT_TIMEOUT_MS, PartitionListener, kafka_call, make_consumer, to_offsets
from deepsift.daemon.stream.fetch import FetchPolicy
from deepsift.daemon.stream.health import Health
from deepsift.daemon.stream.metrics import StreamMetrics
from deepsift.daemon.stream.offsets import OffsetLedger, PartitionKey
from deepsift.daemon.stream.persist import PersistContext, persist_worker
from deepsift.daemon.stream.prepare import JobGuards, PrepareContext, prepare_worker
from deepsift.daemon.stream.probes import watch_dependencies
from deepsift.daemon.stream.retry import Abandoned, Backoff, retry_forever
from deepsift.daemon.stream.work import Completion, Envelope

log = structlog.get_logger(__name__)

POLL_TIMEOUT_MS = 100
OBSERVE_EVERY_S = 5.0
REBALANCE_COMMIT_DELAY_S = 0.5


@dataclass
class Lifecycle:
    """Stop requests and failures, shared by the signal handlers, the main loop and the stages."""

    stopping: threading.Event = field(default_factory=threading.Event)  # drain and exit
    hurry: threading.Event = field(default_factory=threading.Event)  # a second signal: stop waiting
    stop_now: threading.Event = field(default_factory=threading.Event)  # stages end, retries give up
    fatal: threading.Event = field(default_factory=threading.Event)  # a stage crashed

    signal: str | None = None  # the first stop signal's name, logged by the loop (handlers must not log)

    def request_stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        """Signal handler: set flags only (a log line here could re-enter a write in progress)."""
        if self.stopping.is_set():
            self.hurry.set()
        elif signum is not None:
            self.signal = signal.Signals(signum).name
        self.stopping.set()


class Watch:
    """Dependency outages go to readiness and to the retry counter."""

    def __init__(self, health: Health, metrics: StreamMetrics) -> None:
        self._health = health
        self._metrics = metrics

    def dependency_failed(self, name: str, error: str) -> None:
        self._health.dependency_failed(name, error)
        self._metrics.retries.labels(dependency=name).inc()

    def dependency_ok(self, name: str) -> None:
        self._health.dependency_ok(name)


@dataclass(frozen=True)
class Services:
    """What the loop runs on, made by ``start_services`` (or by a test)."""

    settings: Settings
    engines: EngineWatcher  # the serving engine, switched when another is promoted
    repository: VerdictRepository
    producer: KafkaProducer
    health: Health
    metrics: StreamMetrics
    lifecycle: Lifecycle
    decoder: str = "pyav"  # the settings' decoder with auto resolved (daemon.runtime.start_decoder)


class StreamDaemon:
    """The consumer loop and its stages; ``run`` returns the process exit code."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings
        self.ledger = OffsetLedger()
        self.watch = Watch(services.health, services.metrics)
        self.prepare_q: queue.Queue = queue.Queue(maxsize=self.settings.max_in_flight)
        self.infer_q: queue.Queue = queue.Queue(maxsize=self.settings.prefetch)
        self.persist_q: queue.Queue = queue.Queue(maxsize=max(self.settings.prefetch, 8))
        self.done_q: queue.Queue[Completion] = queue.Queue()  # bounded by max_in_flight
        self.backlog: collections.deque[Envelope] = collections.deque()  # taken, not yet queued
        self._next_commit = 0.0
        self._kafka_delays = Backoff().delays()
        self._next_observe = 0.0
        self._notified_ready = False
        self._last_progress = time.monotonic()
        self._stall_logged = False

    # --- the loop --------------------------------------------------------------------------------

    def run(self) -> int:
        lifecycle = self.services.lifecycle
        consumer = self._join()
        if consumer is None:
            return 0
        self._start_stages()
        try:
            while not lifecycle.stopping.is_set() and not lifecycle.fatal.is_set():
                self._turn(consumer)
            if lifecycle.fatal.is_set():  # no drain: a stage is gone; keep what is finished
                self._collect()
                self._commit(consumer, force=True)
            else:
                self._drain(consumer)
        finally:
            self._stop(consumer)
        return 1 if lifecycle.fatal.is_set() else 0

    def _join(self) -> KafkaConsumer | None:
        """Subscribe to the jobs topic, waiting for the broker; None when asked to stop meanwhile."""
        notify.notify_status("joining the consumer group")
        try:
            consumer = retry_forever(
                lambda: kafka_call(make_consumer, self.settings, self.settings.max_in_flight),
                dependency="kafka", stop=self.services.lifecycle.stopping, watch=self.watch,
            )  # fmt: skip
        except Abandoned:
            return None
        listener = PartitionListener(consumer, self._assigned, self._revoking, self.ledger.committed)
        consumer.subscribe([self.settings.kafka_topic], listener=listener)
        return consumer

    def _turn(self, consumer: KafkaConsumer) -> None:
        if not self._stalled():  # a hung stage (a stuck decoder) stops the heartbeats: systemd/k8s restart us
            self.services.health.turned()
            notify.notify_watchdog()
        self._collect()
        self._commit(consumer)
        self._feed()
        self._flow(consumer)
        for record in self._poll(consumer):
            self._take(record)
        self._feed()
        self._observe(consumer)

    def _stalled(self) -> bool:
        """Jobs are in flight but none has finished for ``stall_timeout_s``."""
        now = time.monotonic()
        if self.ledger.in_flight() == 0:
            self._last_progress, self._stall_logged = now, False
            return False
        stalled = now - self._last_progress > self.settings.stall_timeout_s
        if stalled and not self._stall_logged:
            log.error("pipeline_stalled", in_flight=self.ledger.in_flight(), seconds=round(now - self._last_progress))
            self._stall_logged = True
        return stalled

    def _poll(self, consumer: KafkaConsumer) -> list[ConsumerRecord]:
        room = max(1, self.settings.max_in_flight - self.ledger.in_flight())
        try:
            polled = consumer.poll(timeout_ms=POLL_TIMEOUT_MS, max_records=room)
        except KafkaError as e:
            self.watch.dependency_failed("kafka", str(e))
            log.warning("poll_failed", error=repr(e))
            time.sleep(next(self._kafka_delays))
            return []
        self.watch.dependency_ok("kafka")
        return [record for records in polled.values() for record in records]

    def _take(self, record: ConsumerRecord) -> None:
        ticket = self.ledger.take(record.topic, record.partition, record.offset)
        if ticket is None:  # fetched before its partition was revoked
            return
        self.backlog.append(Envelope(ticket, record.key, record.value, record.timestamp, time.monotonic()))

    def _feed(self) -> None:
        """Hand taken messages to the prepare stage as long as it has room; drop those of revoked partitions."""
        while self.backlog:
            if not self.ledger.is_current(self.backlog[0].ticket):
                self.backlog.popleft()
                continue
            try:
                self.prepare_q.put_nowait(self.backlog[0])
            except queue.Full:
                return
            self.backlog.popleft()

    def _flow(self, consumer: KafkaConsumer) -> None:
        """Pause every partition while the pipeline is full; resume once it has drained to half."""
        in_flight, paused = self.ledger.in_flight(), consumer.paused()
        if self.backlog or in_flight >= self.settings.max_in_flight:
            running = consumer.assignment() - paused
            if running:
                consumer.pause(*running)
                self.services.metrics.paused.set(len(paused | running))
                log.debug("partitions_paused", in_flight=in_flight, backlog=len(self.backlog))
        elif paused and in_flight <= self.settings.max_in_flight // 2:
            consumer.resume(*paused)
            self.services.metrics.paused.set(0)
            log.debug("partitions_resumed", in_flight=in_flight)

    def _collect(self) -> None:
        """Mark finished jobs in the ledger (jobs of revoked partitions are someone else's now)."""
        metrics = self.services.metrics
        while True:
            try:
                done = self.done_q.get_nowait()
            except queue.Empty:
                return
            if self.ledger.finish(done.ticket):
                self._last_progress, self._stall_logged = time.monotonic(), False
                metrics.finished(done.outcome, done.code)
                if done.timestamp_ms is not None and done.timestamp_ms > 0:
                    metrics.job_seconds.observe(max(0.0, time.time() - done.timestamp_ms / 1000.0))

    def _commit(self, consumer: KafkaConsumer, force: bool = False) -> None:
        """Commit every partition whose committable offset moved; back off while the broker refuses."""
        offsets = self.ledger.ready()
        if not offsets or (not force and time.monotonic() < self._next_commit):
            return
        started = time.perf_counter()
        try:
            consumer.commit(to_offsets(offsets), timeout_ms=COMMIT_TIMEOUT_MS)
        except (CommitFailedError, RebalanceInProgressError) as e:  # not an outage: retried after the rebalance
            self.services.metrics.commits.labels(result="rebalancing").inc()
            self._next_commit = time.monotonic() + REBALANCE_COMMIT_DELAY_S
            log.info("commit_deferred_rebalance", error=type(e).__name__)
            return
        except KafkaError as e:
            self.services.metrics.commits.labels(result="failed").inc()
            self.watch.dependency_failed("kafka", f"offset commit failed: {e}")
            self._next_commit = time.monotonic() + next(self._kafka_delays)
            log.warning("commit_failed", error=repr(e))
            return
        self.ledger.committed(offsets)
        self.watch.dependency_ok("kafka")
        self._kafka_delays = Backoff().delays()
        self.services.metrics.commits.labels(result="ok").inc()
        self.services.metrics.stage_seconds.labels(stage="commit").observe(time.perf_counter() - started)
        log.debug("committed", offsets={f"{t}/{p}": o for (t, p), o in offsets.items()})

    def _observe(self, consumer: KafkaConsumer) -> None:
        """Gauges and readiness every few seconds: in flight, partitions, lag, the database."""
        if not self._notified_ready and self.services.health.is_ready():
            self._notified_ready = True
            notify.notify_ready()
            log.info("ready", partitions=_names(self.ledger.assigned()))
        now = time.monotonic()
        if now < self._next_observe:
            return
        self._next_observe = now + OBSERVE_EVERY_S
        metrics, in_flight = self.services.metrics, self.ledger.in_flight()
        metrics.in_flight.set(in_flight)
        metrics.assigned.set(len(self.ledger.assigned()))
        for topic, partition in self.ledger.assigned():
            self._observe_lag(consumer, topic, partition)
        notify.notify_status(f"{len(self.ledger.assigned())} partitions, {in_flight} jobs in flight")

    def _observe_lag(self, consumer: KafkaConsumer, topic: str, partition: int) -> None:
        try:
            end = consumer.highwater(TopicPartition(topic, partition))
        except KafkaError:
            return
        committed = self.ledger.last_committed((topic, partition))
        if end is not None and committed is not None:
            self.services.metrics.lag.labels(topic=topic, partition=str(partition)).set(max(0, end - committed))

    # --- rebalances: kafka-python's IO thread calls these while the loop runs (the ledger locks itself) ---

    def _assigned(self, keys: set[PartitionKey]) -> None:
        """The whole new assignment: partitions kept go on as they were, those given up are forgotten."""
        dropped = self.ledger.assign(keys)  # the backlog sheds their messages as it is fed (main thread)
        for topic, partition in dropped:
            self.services.metrics.forget_partition(topic, partition)
        self.services.health.joined(True)
        log.info("partitions_assigned", partitions=_names(keys), given_up=_names(dropped))

    def _revoking(self, keys: set[PartitionKey]) -> dict[PartitionKey, int]:
        """Before a rebalance: what is finished on these partitions, for the listener to commit."""
        self._collect()
        offsets = self.ledger.revoking(keys)
        if keys:
            commit = {f"{t}/{p}": o for (t, p), o in offsets.items()}
            log.info("partitions_revoked", partitions=_names(keys), commit=commit)
        return offsets

    # --- stages ----------------------------------------------------------------------------------

    def _start_stages(self) -> None:
        s, lifecycle = self.services, self.services.lifecycle
        attempts = JobAttempts.beside(s.repository)
        guards = JobGuards(attempts, self.settings.max_frames_per_job, self.settings.poison_max_attempts)
        prepare_context = PrepareContext(
            engines=s.engines.current,
            config=judge_config(self.settings, s.decoder),
            policy=fetch_policy(self.settings),
            repository=s.repository,
            watch=self.watch,
            metrics=s.metrics,
            stop=lifecycle.stop_now,
            is_current=self.ledger.is_current,
            guards=guards,
        )
        for i in range(self.settings.prepare_workers):
            args = (self.prepare_q, self.infer_q, prepare_context, self._detectors())
            self._spawn(f"prepare-{i}", prepare_worker, *args)
        batcher = MicroBatcher(
            self.infer_q, self.settings.batch_max_frames, self.settings.batch_max_wait_ms / 1000.0, lifecycle.stop_now
        )
        self._spawn("infer", batch_worker, batcher, self.persist_q, s.engines.current, s.metrics, lifecycle.stop_now)
        persist_context = PersistContext(
            s.repository, s.producer, self.settings.kafka_dead_letter_topic, self.settings.kafka_verdict_topic,
            self.watch, s.metrics, lifecycle.stop_now,
        )  # fmt: skip
        self._spawn("persist", persist_worker, self.persist_q, self.done_q, persist_context)
        self._spawn("probes", watch_dependencies, self.settings, s.health, lifecycle.stop_now)
        self._spawn("attempts-sweep", sweep_attempts, attempts, self._committed_offsets, lifecycle.stop_now)
        s.metrics.watch_queues({"prepare": self.prepare_q, "infer": self.infer_q, "persist": self.persist_q})

    def _committed_offsets(self) -> dict[PartitionKey, int]:
        """What this daemon committed, per partition it owns: no message below is delivered to the group again."""
        ledger = self.ledger
        return {key: offset for key in ledger.assigned() if (offset := ledger.last_committed(key)) is not None}

    def _detectors(self) -> FaceDetectors:
        """One prepare worker's face detectors, the serving engine's built now rather than on the first job."""
        detectors = FaceDetectors(self.settings.device)
        detectors.for_engine(self.services.engines.current().manifest)
        return detectors

    def _spawn(self, name: str, target: Callable[..., None], *args: object) -> None:
        threading.Thread(target=self._guarded, args=(name, target, *args), name=name, daemon=True).start()

    def _guarded(self, name: str, target: Callable[..., None], *args: object) -> None:
        """A stage that dies stops the daemon (exit 1, restart): its in-flight work would never finish."""
        try:
            target(*args)
        except Abandoned:
            return
        except BaseException:
            log.exception("stage_crashed", stage=name)
            self.services.lifecycle.fatal.set()

    # --- drain and stop --------------------------------------------------------------------------

    def _drain(self, consumer: KafkaConsumer) -> None:
        """Finish the jobs the stages have started and commit them; queued jobs are released to Kafka."""
        lifecycle, health = self.services.lifecycle, self.services.health
        health.draining()
        self.services.engines.stop()  # no new job will be prepared: a promoted engine would serve nothing
        notify.notify_stopping()
        notify.notify_status("draining")
        consumer.pause(*consumer.assignment())
        released = self._release_queued()
        deadline = time.monotonic() + self.settings.drain_deadline_s
        log.info("drain_started", signal=lifecycle.signal, started=self._started(released), released=len(released),
                 deadline_s=self.settings.drain_deadline_s)  # fmt: skip
        while self._started(released) and time.monotonic() < deadline and not lifecycle.hurry.is_set():
            health.turned()
            notify.notify_watchdog()
            self._collect()
            self._commit(consumer)
            self._poll(consumer)  # keeps the membership; partitions are paused, anything returned is left
        self._collect()
        self._commit(consumer, force=True)
        left = self._started(released)
        (log.warning if left else log.info)("drain_finished", unfinished=left, released=len(released))

    def _release_queued(self) -> list[Envelope]:
        """Take back the jobs no stage has started: they stay uncommitted, so Kafka delivers them again."""
        released = list(self.backlog)
        self.backlog.clear()
        while True:
            try:
                released.append(self.prepare_q.get_nowait())
            except queue.Empty:
                return released

    def _started(self, released: list[Envelope]) -> int:
        """Jobs in flight that a stage has started (released ones of partitions still owned do not count)."""
        still_owned = sum(1 for envelope in released if self.ledger.is_current(envelope.ticket))
        return max(0, self.ledger.in_flight() - still_owned)

    def _stop(self, consumer: KafkaConsumer) -> None:
        self.services.engines.stop()
        self.services.lifecycle.stop_now.set()
        try:
            consumer.close(autocommit=False)
        except Exception as e:  # leaving the group is a courtesy; the session timeout does it anyway
            log.warning("consumer_close_failed", error=repr(e))
        self.services.producer.close(timeout=5)
        log.info("stopped")


def _names(keys: set[PartitionKey]) -> list[str]:
    return sorted(f"{topic}/{partition}" for topic, partition in keys)


def fetch_policy(settings: Settings) -> FetchPolicy:
    return FetchPolicy.create(
        media_roots=settings.media_roots,
        allowed_hosts=settings.http_allowed_hosts,
        allowed_networks=settings.http_allowed_networks,
        max_bytes=min(settings.http_max_bytes, settings.max_media_bytes),
        timeout_s=settings.http_timeout_s,
    )
