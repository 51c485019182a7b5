"""Stage 3, one thread: store each verdict, then report the job complete so its offset may be committed.

Order per job: dead letter (error verdicts) → SQL commit → result event → completion. Each step is
retried while its dependency is down, so a completion means all of them happened; a crash in between
re-delivers the job, which then finds its verdict stored and only repeats the result event. Dead
letters and result events are therefore at least once, verdicts exactly once per job and engine.

Nothing one job holds can end this thread (the daemon would exit, and the re-delivered job would end the
next one too). A verdict the database refuses is replaced by a plain ``store_failed`` error verdict; if
even that is refused a few times, the job is dead-lettered ``unstorable`` and reported complete without a
row. A record too large for the broker is produced truncated (``outbound``); one the broker refuses for
any other reason than an outage is logged and left out. Only outages wait, for as long as they last.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog
from kafka import KafkaProducer
from kafka.errors import MessageSizeTooLargeError

from deepsift.daemon.records import VerdictRecord
from deepsift.daemon.repository import VerdictRepository
from deepsift.daemon.stream.consumer import send_and_wait
from deepsift.daemon.stream.metrics import StreamMetrics
from deepsift.daemon.stream.outbound import Form, dead_letter, fitted, record_key, verdict_event
from deepsift.daemon.stream.retry import Abandoned, Backoff, DependencyWatch, retry_forever
from deepsift.daemon.stream.work import Completion, Envelope, Judged, Work, take

log = structlog.get_logger(__name__)

T = TypeVar("T")

STORE_ATTEMPTS = 3  # a replacement error verdict the database refuses (not an outage) is tried this often
STORE_BACKOFF = Backoff(initial_s=0.5, max_s=4.0)
UNSTORABLE = "unstorable"  # the code of a job whose verdict could not be stored at all
DETAIL_CHARS = 1000


@dataclass(frozen=True)
class PersistContext:
    repository: VerdictRepository
    producer: KafkaProducer
    dead_letter_topic: str
    verdict_topic: str | None
    watch: DependencyWatch
    metrics: StreamMetrics
    stop: threading.Event
    store_backoff: Backoff = STORE_BACKOFF


def persist(judged: Judged, context: PersistContext) -> Completion:
    """Store one job's verdict (with its dead letter and event); blocks while a dependency is down.

    Raises only ``Abandoned`` (the daemon stops during an outage: the job stays uncommitted)."""
    try:
        return _persist(judged, context)
    except Abandoned:
        raise
    except Exception as e:  # a bug here must fail this job, not the stage
        log.exception("persist_failed_unexpectedly", job_id=judged.work.job_id)
        return _failed_unexpectedly(judged, context, e)


def _persist(judged: Judged, context: PersistContext) -> Completion:
    work, record = judged.work, judged.record
    if record is None:
        return _skipped(work, context)
    if record.status == "error":
        _dead_letter(context, work.envelope, record)
    stored = _save(context, work.envelope, record)
    if stored is None:
        return _completion(work, "error", UNSTORABLE)
    verdict_id, record = stored
    if context.verdict_topic:
        _publish(context, record, verdict_id)
    log.info("verdict", job_id=record.job_id, uri=record.media_uri, status=record.status, label=record.label,
             p_fake=record.p_fake, code=record.code, verdict_id=verdict_id)  # fmt: skip
    return _completion(work, record.status, record.code)


def _skipped(work: Work, context: PersistContext) -> Completion:
    """A job this engine judged before: its result event again (at least once), nothing stored."""
    log.info("verdict_stored_before", job_id=work.job_id, verdict_id=work.stored_id)
    stored_id = work.stored_id
    if context.verdict_topic and stored_id is not None:
        try:
            stored = _retry(lambda: context.repository.get(stored_id), "database", context, work.job_id)
        except Abandoned:
            raise
        except Exception:  # gone or unreadable: the verdict is there, only its repeated event is missing
            log.exception("stored_verdict_unreadable", job_id=work.job_id, verdict_id=stored_id)
        else:
            _publish(context, stored, stored_id)
    return _completion(work, "skipped", None)


def _completion(work: Work, outcome: str, code: str | None) -> Completion:
    return Completion(work.envelope.ticket, work.job_id, outcome, code, work.envelope.timestamp_ms)


def _save(context: PersistContext, envelope: Envelope, record: VerdictRecord) -> tuple[int, VerdictRecord] | None:
    """The stored verdict and its id; one the database refuses (a bug) is replaced by a plain error verdict."""
    try:
        return _retry(lambda: context.repository.save(record).id, "database", context, record.job_id), record
    except Abandoned:
        raise
    except Exception as e:
        log.exception("verdict_refused", job_id=record.job_id)
        return _store_error(context, envelope, replacement_error(record, "store_failed", describe(e)))


def _store_error(
    context: PersistContext, envelope: Envelope, failed: VerdictRecord
) -> tuple[int, VerdictRecord] | None:
    """Dead-letter and store an error verdict that replaces the job's own; None when it cannot be stored either.

    The job is then dead-lettered again as ``unstorable`` and still completed: its offset is committed
    rather than the message stopping every daemon that takes it."""
    _dead_letter(context, envelope, failed)
    verdict_id, error = _save_bounded(context, failed)
    if verdict_id is not None:
        return verdict_id, failed
    log.error("verdict_unstorable", job_id=failed.job_id, attempts=STORE_ATTEMPTS, error=error)
    _dead_letter(context, envelope, replacement_error(failed, UNSTORABLE, f"no verdict stored: {error}"))
    return None


def _save_bounded(context: PersistContext, record: VerdictRecord) -> tuple[int | None, str]:
    """Save with outages waited out, but a refusal retried only ``STORE_ATTEMPTS`` times: (id or None, last error)."""
    delays = context.store_backoff.delays()
    error = ""
    for attempt in range(1, STORE_ATTEMPTS + 1):
        try:
            return _retry(lambda: context.repository.save(record).id, "database", context, record.job_id), ""
        except Abandoned:
            raise
        except Exception as e:
            error = describe(e)
            log.warning("error_verdict_refused", job_id=record.job_id, attempt=attempt, error=error)
        if attempt < STORE_ATTEMPTS and context.stop.wait(next(delays)):
            raise Abandoned("stopping while the database refuses an error verdict")
    return None, error


def replacement_error(record: VerdictRecord, code: str, detail: str) -> VerdictRecord:
    """A bare error verdict for the job: none of the original's values, which may be what was refused."""
    return VerdictRecord(
        job_id=record.job_id, source=record.source, media_uri=record.media_uri, status="error", engine=record.engine,
        code=code, detail=detail[:DETAIL_CHARS],
    )  # fmt: skip


def describe(error: BaseException) -> str:
    """A short reason for a log line or verdict: a database error's own message, not the SQL and its values."""
    cause = getattr(error, "orig", None) or error
    try:
        text = f"{type(cause).__name__}: {cause}"
    except Exception:  # a message that cannot even be rendered
        text = type(cause).__name__
    return text[:DETAIL_CHARS]


def _failed_unexpectedly(judged: Judged, context: PersistContext, error: Exception) -> Completion:
    """The job of a persist that raised: an ``internal_error`` verdict, or ``unstorable``; never an exception."""
    work, record = judged.work, judged.record
    if record is None:
        return _completion(work, "skipped", None)
    try:
        stored = _store_error(context, work.envelope, replacement_error(record, "internal_error", describe(error)))
    except Abandoned:
        raise
    except Exception:
        log.exception("persist_failed_twice", job_id=work.job_id)
        return _completion(work, "error", UNSTORABLE)
    return _completion(work, "error", "internal_error" if stored is not None else UNSTORABLE)


def _dead_letter(context: PersistContext, envelope: Envelope, record: VerdictRecord) -> None:
    """The original message and the reason, on the dead-letter topic, acknowledged before the verdict is stored."""
    build = functools.partial(dead_letter, envelope, record)
    form = _produce(context, context.dead_letter_topic, record.job_id, build)
    if form is None:
        return
    context.metrics.dead_letters.labels(code=record.code or "unknown").inc()
    ticket = envelope.ticket
    log.warning("dead_letter", job_id=record.job_id, code=record.code, detail=record.detail, topic=ticket.topic,
                partition=ticket.partition, offset=ticket.offset, form=form)  # fmt: skip


def _publish(context: PersistContext, record: VerdictRecord, verdict_id: int) -> None:
    assert context.verdict_topic is not None
    _produce(context, context.verdict_topic, record.job_id, functools.partial(verdict_event, record, verdict_id))


def _produce(context: PersistContext, topic: str, job_id: str, build: Callable[[Form], bytes]) -> Form | None:
    """Produce the first form of a record the broker takes, waiting out outages; the form, or None if none was.

    A form too large is followed by a smaller one; any other refusal (not an outage) is logged and the
    record left out, since trying it again would fail the same way."""
    try:
        key = record_key(job_id)
        for form, value in fitted(build):
            try:
                _retry(functools.partial(send_and_wait, context.producer, topic, key, value), "kafka", context, job_id)
                return form
            except MessageSizeTooLargeError:
                log.warning("record_too_large", job_id=job_id, topic=topic, form=form, bytes=len(value))
    except Abandoned:
        raise
    except Exception:
        log.exception("record_not_produced", job_id=job_id, topic=topic)
        return None
    log.error("record_not_produced", job_id=job_id, topic=topic, reason="too large in every form")
    return None


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
