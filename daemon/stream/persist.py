"""Stage 3, one thread: store each verdict, then report the job complete so its offset may be committed.

Order per job: dead letter (error verdicts) → SQL commit → result event → completion. Each step is
retried while its dependency is down, so a completion means all of them happened; a crash in between
re-delivers the job, which then finds its verdict stored and only repeats the result event. Dead
letters and result events are therefore at least once, verdicts exactly once per job and engine.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

import structlog
from kafka import KafkaProducer
from kafka.errors import MessageSizeTooLargeError

from daemon.records import VerdictRecord
from daemon.repository import VerdictRepository
from daemon.stream.consumer import send_and_wait
from daemon.stream.metrics import StreamMetrics
from daemon.stream.outbound import dead_letter, verdict_event
from daemon.stream.retry import Abandoned, DependencyWatch, retry_forever
from daemon.stream.work import Completion, Envelope, Judged, take

log = structlog.get_logger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class PersistContext:
    repository: VerdictRepository
    producer: KafkaProducer
    dead_letter_topic: str
    verdict_topic: str | None
    watch: DependencyWatch
    metrics: StreamMetrics
    stop: threading.Event


def persist(judged: Judged, context: PersistContext) -> Completion:
    """Store one job's verdict (with its dead letter and event); blocks while a dependency is down."""
    work = judged.work
    record = judged.record
    if record is None:
        log.info("verdict_stored_before", job_id=work.job_id, verdict_id=work.stored_id)
        if context.verdict_topic and work.stored_id is not None:
            stored = _retry(lambda: context.repository.get(work.stored_id), "database", context, work.job_id)
            _publish(context, stored, work.stored_id)
        return Completion(work.envelope.ticket, work.job_id, "skipped", None, work.envelope.timestamp_ms)
    if record.status == "error":
        _dead_letter(context, work.envelope, record)
    verdict_id, record = _save(context, work.envelope, record)
    if context.verdict_topic:
        _publish(context, record, verdict_id)
    log.info("verdict", job_id=record.job_id, uri=record.media_uri, status=record.status, label=record.label,
             p_fake=record.p_fake, code=record.code, verdict_id=verdict_id)  # fmt: skip
    return Completion(work.envelope.ticket, work.job_id, record.status, record.code, work.envelope.timestamp_ms)


def _save(context: PersistContext, envelope: Envelope, record: VerdictRecord) -> tuple[int, VerdictRecord]:
    """The stored verdict and its id; one the database refuses (a bug) is replaced by a plain error verdict."""
    try:
        return _retry(lambda: context.repository.save(record).id, "database", context, record.job_id), record
    except Abandoned:
        raise
    except Exception as e:
        log.exception("verdict_refused", job_id=record.job_id)
        failed = _store_failed(record, repr(e))
        _dead_letter(context, envelope, failed)
        return _retry(lambda: context.repository.save(failed).id, "database", context, record.job_id), failed


def _store_failed(record: VerdictRecord, detail: str) -> VerdictRecord:
    return replace(
        record, status="error", code="store_failed", detail=detail, label=None, p_fake=None, class_probs=None,
        frames=(), tracks=(), masks=(),
    )  # fmt: skip


def _dead_letter(context: PersistContext, envelope: Envelope, record: VerdictRecord) -> None:
    """The original message and the reason, on the dead-letter topic, acknowledged before the verdict is stored."""
    key = record.job_id.encode()
    try:
        value = dead_letter(envelope, record)
        _retry(lambda: send_and_wait(context.producer, context.dead_letter_topic, key, value), "kafka", context,
               record.job_id)  # fmt: skip
    except MessageSizeTooLargeError:
        value = dead_letter(envelope, record, truncate=True)
        _retry(lambda: send_and_wait(context.producer, context.dead_letter_topic, key, value), "kafka", context,
               record.job_id)  # fmt: skip
    context.metrics.dead_letters.labels(code=record.code or "unknown").inc()
    ticket = envelope.ticket
    log.warning("dead_letter", job_id=record.job_id, code=record.code, detail=record.detail, topic=ticket.topic,
                partition=ticket.partition, offset=ticket.offset)  # fmt: skip


def _publish(context: PersistContext, record: VerdictRecord, verdict_id: int) -> None:
    assert context.verdict_topic is not None
    value = verdict_event(record, verdict_id)
    _retry(lambda: send_and_wait(context.producer, context.verdict_topic, record.job_id.encode(), value), "kafka",
           context, record.job_id)  # fmt: skip


def _retry(operation: Callable[[], T], dependency: str, context: PersistContext, job_id: str) -> T:
    return retry_forever(operation, dependency=dependency, stop=context.stop, watch=context.watch, job_id=job_id)


def persist_worker(inbox: queue.Queue, done: queue.Queue, context: PersistContext) -> None:
    """Thread body: store verdicts until the daemon stops."""
    while True:
        judged = take(inbox, context.stop)
        if not isinstance(judged, Judged):
            return
        started = time.perf_counter()
        completion = persist(judged, context)
        context.metrics.stage_seconds.labels(stage="persist").observe(time.perf_counter() - started)
        done.put(completion)
