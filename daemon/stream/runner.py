"""The pipeline loop of ``daemon run`` and ``daemon scan``: feed the stages from a job source, acknowledge
what they finished.

Threads: the loop (the only user of the source), ``prepare_workers`` prepare threads, one batching thread
(scores every job), one persist thread, and for ``daemon run`` the dependency probes (readiness sees a silent
database or broker) and the attempts sweeper; the engine watcher loads and warms a promoted engine beside the
serving one (prepare workers take the serving engine as they start a job). Bounded queues link them; when the
prepare queue is full or ``max_in_flight`` jobs are unacknowledged, the loop pauses the source and keeps
turning (a Kafka member stays in its group) until the stages catch up. Memory is bounded by those limits,
whatever arrives.

Delivery: a job is acknowledged only once its verdict is in SQL; the Kafka source commits an offset only
when every job below it is (``offsets``). SIGTERM/SIGINT drain: stop taking jobs, finish the ones a stage
has started, acknowledge, close — within ``drain_deadline_s``; a second signal stops waiting. Jobs not
started or not finished stay unacknowledged (Kafka delivers them again). A source that runs out (the files
of a scan) ends the loop once every job it handed out is acknowledged.

Poison jobs (sources that redeliver): each delivery a prepare worker starts is counted in SQL
(``daemon.attempts``). Messages that were in flight when a daemon died are prepared one at a time; one whose
``poison_max_attempts`` deliveries all died is answered ``poison_job``. The ``attempts-sweep`` thread deletes
the counts below the positions the source committed.
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

from deepsift.daemon import notify
from deepsift.daemon.attempts import JobAttempts, sweep_attempts
from deepsift.daemon.engine_watch import EngineSource, FaceDetectors
from deepsift.daemon.pipeline import JudgeConfig, verdict
from deepsift.daemon.pipeline.fetch import FetchPolicy
from deepsift.daemon.repository import VerdictRepository
from deepsift.daemon.runtime import near_duplicate_policy, reuse_policy
from deepsift.daemon.settings import Settings
from deepsift.daemon.sources.base import JobSource
from deepsift.daemon.stream.batching import Judge, MicroBatcher, batch_worker
from deepsift.daemon.stream.health import Health
from deepsift.daemon.stream.metrics import StreamMetrics
from deepsift.daemon.stream.persist import PersistContext, persist_worker
from deepsift.daemon.stream.prepare import JobGuards, PrepareContext, prepare_worker
from deepsift.daemon.stream.retry import Abandoned
from deepsift.daemon.stream.sink import ResultSink
from deepsift.daemon.stream.work import Completion, Envelope
from deepsift.daemon.uploads import UploadHistory
from deepsift.engines.backends import LoadedEngine

log = structlog.get_logger(__name__)

OBSERVE_EVERY_S = 5.0
STAGE_EXIT_S = 10.0  # how long stopping waits for the stage threads to end


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
    """What the loop runs on, made by the composition root (``daemon.compose``) or by a test."""

    settings: Settings
    engines: EngineSource  # the serving engine (an EngineWatcher switches when another is promoted)
    repository: VerdictRepository
    sink: ResultSink  # dead letters and result events (Kafka), or nothing (scan)
    health: Health
    metrics: StreamMetrics
    lifecycle: Lifecycle
    config: JudgeConfig  # frames, aggregation, budgets and the decoder
    detectors: Callable[[], FaceDetectors]  # one set per prepare worker
    judge: Judge = verdict
    probes: Callable[[threading.Event], None] | None = None  # readiness probes until the event (daemon run)
    on_completion: Callable[[Completion], None] | None = None  # told of each job acknowledged (scan's table)
    outage_patience_s: float | None = None  # how long a database outage is waited out per verdict; None: forever
    verdict_log_level: str = "info"  # each stored verdict's log line; "debug" for a scan, whose table says it
    shadows: tuple[LoadedEngine, ...] = ()  # engines scoring every job beside the serving one (pipeline.shadow)


class PipelineLoop:
    """The loop and its stages over one job source; ``run`` returns the process exit code."""

    def __init__(self, services: Services, source: JobSource) -> None:
        self.services = services
        self.source = source
        self.settings = services.settings
        self.watch = Watch(services.health, services.metrics)
        self.prepare_q: queue.Queue = queue.Queue(maxsize=self.settings.max_in_flight)
        self.infer_q: queue.Queue = queue.Queue(maxsize=self.settings.prefetch)
        self.persist_q: queue.Queue = queue.Queue(maxsize=max(self.settings.prefetch, 8))
        self.done_q: queue.Queue[Completion] = queue.Queue()  # bounded by max_in_flight
        self.backlog: collections.deque[Envelope] = collections.deque()  # taken, not yet queued
        self._next_observe = 0.0
        self._notified_ready = False
        self._last_progress = time.monotonic()
        self._stall_logged = False
        self._threads: list[threading.Thread] = []

    # --- the loop --------------------------------------------------------------------------------

    def run(self) -> int:
        lifecycle = self.services.lifecycle
        if not self.source.open(lifecycle.stopping, self._collect):
            return 0
        self._start_stages()
        try:
            while not lifecycle.stopping.is_set() and not lifecycle.fatal.is_set() and not self._finished():
                self._turn()
            if lifecycle.fatal.is_set():  # no drain: a stage is gone; keep what is finished
                self._collect()
                self.source.commit(force=True)
            elif lifecycle.stopping.is_set():
                self._drain()
            else:
                self.source.commit(force=True)
        finally:
            self._stop()
        return 1 if lifecycle.fatal.is_set() else 0

    def _finished(self) -> bool:
        """The source ran out and every job it handed out is acknowledged (a scan is done)."""
        return self.source.exhausted() and not self.backlog and self.source.in_flight() == 0

    def _turn(self) -> None:
        if not self._stalled():  # a hung stage (a stuck decoder) stops the heartbeats: systemd/k8s restart us
            self.services.health.turned()
            notify.notify_watchdog()
        self._collect()
        self.source.commit()
        self._feed()
        self._flow()
        room = max(1, self.settings.max_in_flight - self.source.in_flight())
        self.backlog.extend(self.source.take(room))
        self._feed()
        self._observe()

    def _stalled(self) -> bool:
        """Jobs are in flight but none has finished for ``stall_timeout_s``."""
        now, in_flight = time.monotonic(), self.source.in_flight()
        if in_flight == 0:
            self._last_progress, self._stall_logged = now, False
            return False
        stalled = now - self._last_progress > self.settings.stall_timeout_s
        if stalled and not self._stall_logged:
            log.error("pipeline_stalled", in_flight=in_flight, seconds=round(now - self._last_progress))
            self._stall_logged = True
        return stalled

    def _feed(self) -> None:
        """Hand taken deliveries to the prepare stage as long as it has room; drop those the source gave up."""
        while self.backlog:
            if not self.source.owns(self.backlog[0].ticket):
                self.backlog.popleft()
                continue
            try:
                self.prepare_q.put_nowait(self.backlog[0])
            except queue.Full:
                return
            self.backlog.popleft()

    def _flow(self) -> None:
        """Pause the source while the pipeline is full; resume once it has drained to half."""
        in_flight = self.source.in_flight()
        if self.backlog or in_flight >= self.settings.max_in_flight:
            self.source.pause()
        elif in_flight <= self.settings.max_in_flight // 2:
            self.source.resume()

    def _collect(self) -> None:
        """Acknowledge finished jobs (jobs of revoked partitions are someone else's now)."""
        metrics = self.services.metrics
        while True:
            try:
                done = self.done_q.get_nowait()
            except queue.Empty:
                return
            if self.source.acknowledge(done):
                self._last_progress, self._stall_logged = time.monotonic(), False
                metrics.finished(done.outcome, done.code)
                if done.timestamp_ms is not None and done.timestamp_ms > 0:
                    metrics.job_seconds.observe(max(0.0, time.time() - done.timestamp_ms / 1000.0))
                if self.services.on_completion is not None:
                    self.services.on_completion(done)

    def _observe(self) -> None:
        """Gauges and readiness every few seconds: in flight, the source's own (partitions, lag)."""
        if not self._notified_ready and self.services.health.is_ready():
            self._notified_ready = True
            notify.notify_ready()
            log.info("ready", source=self.source.name)
        now = time.monotonic()
        if now < self._next_observe:
            return
        self._next_observe = now + OBSERVE_EVERY_S
        self.services.metrics.in_flight.set(self.source.in_flight())
        self.source.observe()

    # --- stages ----------------------------------------------------------------------------------

    def _start_stages(self) -> None:
        s, lifecycle = self.services, self.services.lifecycle
        attempts = JobAttempts.beside(s.repository)
        guards = JobGuards(attempts, self.settings.max_frames_per_job, self.settings.poison_max_attempts)
        prepare_context = PrepareContext(
            engines=s.engines.current,
            config=s.config,
            policy=fetch_policy(self.settings),
            repository=s.repository,
            watch=self.watch,
            metrics=s.metrics,
            stop=lifecycle.stop_now,
            is_current=self.source.owns,
            guards=guards,
            history=UploadHistory(s.repository),
            reuse=reuse_policy(self.settings),
            near=near_duplicate_policy(self.settings),
            shadows=tuple(shadow.manifest.input for shadow in s.shadows),
        )
        for i in range(self.settings.prepare_workers):
            self._spawn(f"prepare-{i}", prepare_worker, self.prepare_q, self.infer_q, prepare_context, s.detectors())
        batcher = MicroBatcher(
            self.infer_q, self.settings.batch_max_frames, self.settings.batch_max_wait_ms / 1000.0, lifecycle.stop_now
        )
        self._spawn("infer", batch_worker, batcher, self.persist_q, s.engines.current, s.metrics, lifecycle.stop_now,
                    s.judge, s.shadows)  # fmt: skip
        persist_context = PersistContext(
            s.repository,
            s.sink,
            self.watch,
            s.metrics,
            lifecycle.stop_now,
            outage_patience_s=s.outage_patience_s,
            verdict_log_level=s.verdict_log_level,
        )
        self._spawn("persist", persist_worker, self.persist_q, self.done_q, persist_context)
        if s.probes is not None:
            self._spawn("probes", s.probes, lifecycle.stop_now)
        if self.source.redelivers:
            self._spawn("attempts-sweep", sweep_attempts, attempts, self.source.positions, lifecycle.stop_now)
        s.metrics.watch_queues({"prepare": self.prepare_q, "infer": self.infer_q, "persist": self.persist_q})

    def _join_stages(self) -> None:
        """Wait a little for the stages to end: a process that exits while one is inside native code (a decoder,
        the engine, a face detector) aborts. A stage still busy after ``STAGE_EXIT_S`` is left behind."""
        deadline = time.monotonic() + STAGE_EXIT_S
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        busy = [t.name for t in self._threads if t.is_alive()]
        if busy:
            log.warning("stages_still_busy", stages=busy)

    def _spawn(self, name: str, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=self._guarded, args=(name, target, *args), name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

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

    def _drain(self) -> None:
        """Finish the jobs the stages have started and acknowledge them; queued jobs are released."""
        lifecycle, health = self.services.lifecycle, self.services.health
        health.draining()
        self.services.engines.stop()  # no new job will be prepared: a promoted engine would serve nothing
        notify.notify_stopping()
        notify.notify_status("draining")
        self.source.pause()
        released = self._release_queued()
        deadline = time.monotonic() + self.settings.drain_deadline_s
        log.info("drain_started", signal=lifecycle.signal, started=self._started(released), released=len(released),
                 deadline_s=self.settings.drain_deadline_s)  # fmt: skip
        while self._started(released) and time.monotonic() < deadline and not lifecycle.hurry.is_set():
            health.turned()
            notify.notify_watchdog()
            self._collect()
            self.source.commit()
            self.source.keep_alive()
        self._collect()
        self.source.commit(force=True)
        left = self._started(released)
        (log.warning if left else log.info)("drain_finished", unfinished=left, released=len(released))

    def _release_queued(self) -> list[Envelope]:
        """Take back the jobs no stage has started: they stay unacknowledged (Kafka delivers them again)."""
        released = list(self.backlog)
        self.backlog.clear()
        while True:
            try:
                released.append(self.prepare_q.get_nowait())
            except queue.Empty:
                return released

    def _started(self, released: list[Envelope]) -> int:
        """Jobs in flight that a stage has started (released ones the source still owns do not count)."""
        still_owned = sum(1 for envelope in released if self.source.owns(envelope.ticket))
        return max(0, self.source.in_flight() - still_owned)

    def _stop(self) -> None:
        self.services.engines.stop()
        self.services.lifecycle.stop_now.set()
        self._join_stages()
        self.source.close()
        self.services.sink.close()
        log.info("stopped", source=self.source.name)


def fetch_policy(settings: Settings) -> FetchPolicy:
    return FetchPolicy.create(
        media_roots=settings.media_roots,
        allowed_hosts=settings.http_allowed_hosts,
        allowed_networks=settings.http_allowed_networks,
        max_bytes=min(settings.http_max_bytes, settings.max_media_bytes),
        timeout_s=settings.http_timeout_s,
    )
