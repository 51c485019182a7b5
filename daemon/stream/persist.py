"""Stage 3, one thread: store each verdict, then report the job complete so its delivery may be acknowledged.

Each verdict first gets when its job was submitted and how long it waited (``with_submission``). Order per job:
dead letter (error verdicts) → SQL commit (with the job's shadow verdicts, in one transaction)
→ result event → completion, the first and last through the ``ResultSink`` (Kafka for ``daemon run``, nothing
for ``daemon scan``); shadow verdicts are never dead-lettered or announced. Each step is retried
while its dependency is down, so a completion means all of them happened; a crash in between re-delivers the
job, which then finds its verdict stored and only repeats the result event. Dead letters and result events
are therefore at least once, verdicts exactly once per job and engine.

Nothing one job holds can end this thread (the daemon would exit, and the re-delivered job would end the
next one too). A verdict the database refuses is replaced by a plain ``store_failed`` error verdict; if
even that is refused a few times, the job is dead-lettered ``unstorable`` and reported complete without a
row. Only outages wait: for as long as they last (``daemon run``), or for ``outage_patience_s`` (``daemon
scan``, which then reports the verdict as not stored and goes on).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

import structlog

from deepsift.daemon.records import VerdictRecord
from deepsift.daemon.repository import VerdictRepository
from deepsift.daemon.stream.metrics import StreamMetrics
from deepsift.daemon.stream.retry import Abandoned, Backoff, DependencyWatch, retry_forever
from deepsift.daemon.stream.sink import ResultSink
from deepsift.daemon.stream.work import Completion, Envelope, Judged, Work, take
from deepsift.engines.errors import RetryableError

log = structlog.get_logger(__name__)

T = TypeVar("T")

STORE_ATTEMPTS = 3  # a replacement error verdict the database refuses (not an outage) is tried this often
STORE_BACKOFF = Backoff(initial_s=0.5, max_s=4.0)
UNSTORABLE = "unstorable"  # the code of a job whose verdict could not be stored at all
DETAIL_CHARS = 1000


@dataclass(frozen=True)
class PersistContext:
    repository: VerdictRepository
    sink: ResultSink
    watch: DependencyWatch
    metrics: StreamMetrics
    stop: threading.Event
    store_backoff: Backoff = STORE_BACKOFF
    outage_patience_s: float | None = None  # None: a database outage is waited out for as long as it lasts
    verdict_log_level: str = "info"  # of the line each stored verdict logs (a scan prints a table instead)


@dataclass(frozen=True)
class _Stored:
    """What saving a job's verdict came to: the verdict stored and its id, or the judged one and no id."""

    record: VerdictRecord
    verdict_id: int | None
    created: bool = False
    error: str | None = None  # why the judged verdict is not the one stored


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
    judged = with_submission(judged)
    work, record = judged.work, judged.record
    if record is None:
        return _skipped(work, context)
    if record.status == "error":
        context.sink.dead_letter(work.envelope, record)
    stored = _save(context, work.envelope, record, judged.shadows)
    if stored.verdict_id is None:
        return _completion(work, "error", UNSTORABLE, stored)
    context.sink.publish(stored.record, stored.verdict_id)
    record = stored.record
    if stored.created:
        _count_signals(record, context.metrics)
        for shadow in judged.shadows if record is judged.record else ():  # not under a store_failed replacement
            context.metrics.observe_verdict(shadow)
    say = getattr(log, context.verdict_log_level)
    say("verdict", job_id=record.job_id, uri=record.media_uri, status=record.status, label=record.label,
        p_fake=record.p_fake, code=record.code, verdict_id=stored.verdict_id)  # fmt: skip
    return _completion(work, record.status, record.code, stored)


def with_submission(judged: Judged, now: float | None = None) -> Judged:
    """The job's verdicts (serving and shadow) with when it was submitted (``Envelope.timestamp_ms``) and, beside
    the stage timings, ``queue_wait`` (submitted until the daemon took the job from its source) and ``total``
    (submitted until the verdict was ready to store), in milliseconds; clocks that disagree never make them
    negative. A delivery without a submission time (a Kafka record without a timestamp) keeps its verdicts."""
    envelope = judged.work.envelope
    submitted = envelope.submitted_at
    if submitted is None or judged.record is None:
        return judged
    since = submitted.timestamp()
    waited = {
        "queue_wait": round(max(0.0, envelope.taken_at - since) * 1000.0, 2),
        "total": round(max(0.0, (time.time() if now is None else now) - since) * 1000.0, 2),
    }

    def stamped(record: VerdictRecord) -> VerdictRecord:
        return replace(record, submitted_at=submitted, timings_ms={**record.timings_ms, **waited})

    return replace(judged, record=stamped(judged.record), shadows=tuple(stamped(s) for s in judged.shadows))


def _count_signals(record: VerdictRecord, metrics: StreamMetrics) -> None:
    metrics.observe_verdict(record)
    if record.reused_from is not None:
        metrics.reused.inc()
    if record.near_duplicates:
        metrics.near_duplicates.inc(len(record.near_duplicates))
    if record.content_credentials is not None:
        metrics.credentials.labels(state=str(record.content_credentials.get("state"))).inc()


def _skipped(work: Work, context: PersistContext) -> Completion:
    """A job this engine judged before: its result event again (at least once), nothing stored."""
    log.info("verdict_stored_before", job_id=work.job_id, verdict_id=work.stored_id)
    stored_id = work.stored_id
    if context.sink.wants_events and stored_id is not None:
        try:
            stored = _retry(lambda: context.repository.get(stored_id), "database", context, work.job_id)
        except Abandoned:
            raise
        except Exception:  # gone or unreadable: the verdict is there, only its repeated event is missing
            log.exception("stored_verdict_unreadable", job_id=work.job_id, verdict_id=stored_id)
        else:
            context.sink.publish(stored, stored_id)
    return Completion(work.envelope.ticket, work.job_id, "skipped", None, work.envelope.timestamp_ms, stored_id)


def _completion(work: Work, outcome: str, code: str | None, stored: _Stored | None = None) -> Completion:
    envelope = work.envelope
    if stored is None:
        return Completion(envelope.ticket, work.job_id, outcome, code, envelope.timestamp_ms)
    return Completion(envelope.ticket, work.job_id, outcome, code, envelope.timestamp_ms, stored.verdict_id,
                      stored.record, stored.created, stored.error)  # fmt: skip


def _save(
    context: PersistContext, envelope: Envelope, record: VerdictRecord, shadows: tuple[VerdictRecord, ...] = ()
) -> _Stored:
    """Store the verdict with its shadow verdicts; one the database refuses (a bug) is replaced by a plain error
    verdict, without shadows. An outage outlasting ``outage_patience_s`` leaves it unstored."""
    try:
        saved = _retry(lambda: context.repository.save(record, shadows), "database", context, record.job_id)
        return _Stored(record, saved.id, saved.created)
    except Abandoned:
        raise
    except RetryableError as e:  # only with a patience: the database stayed unreachable
        log.error("verdict_not_stored", job_id=record.job_id, uri=record.media_uri, error=str(e))
        return _Stored(record, None, error=str(e))
    except Exception as e:
        log.exception("verdict_refused", job_id=record.job_id)
        reason = describe(e)
    replaced = _store_error(context, envelope, replacement_error(record, "store_failed", reason))
    if replaced.verdict_id is None:
        return _Stored(record, None, error=f"{reason}; then {replaced.error}")
    return replace(replaced, error=reason)


def _store_error(context: PersistContext, envelope: Envelope, failed: VerdictRecord) -> _Stored:
    """Dead-letter and store an error verdict that replaces the job's own; no id when it cannot be stored either.

    The job is then dead-lettered again as ``unstorable`` and still completed: its offset is committed
    rather than the message stopping every daemon that takes it."""
    context.sink.dead_letter(envelope, failed)
    verdict_id, created, error = _save_bounded(context, failed)
    if verdict_id is not None:
        return _Stored(failed, verdict_id, created)
    log.error("verdict_unstorable", job_id=failed.job_id, attempts=STORE_ATTEMPTS, error=error)
    context.sink.dead_letter(envelope, replacement_error(failed, UNSTORABLE, f"no verdict stored: {error}"))
    return _Stored(failed, None, error=error)


def _save_bounded(context: PersistContext, record: VerdictRecord) -> tuple[int | None, bool, str]:
    """Save with outages waited out, but a refusal retried only ``STORE_ATTEMPTS`` times: (id or None, created,
    last error)."""
    delays = context.store_backoff.delays()
    error = ""
    for attempt in range(1, STORE_ATTEMPTS + 1):
        try:
            saved = _retry(lambda: context.repository.save(record), "database", context, record.job_id)
            return saved.id, saved.created, ""
        except Abandoned:
            raise
        except Exception as e:
            error = describe(e)
            log.warning("error_verdict_refused", job_id=record.job_id, attempt=attempt, error=error)
        if attempt < STORE_ATTEMPTS and context.stop.wait(next(delays)):
            raise Abandoned("stopping while the database refuses an error verdict")
    return None, False, error


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
        return _completion(work, "error", UNSTORABLE, _Stored(record, None, error=describe(error)))
    stored = replace(stored, error=describe(error))
    return _completion(work, "error", "internal_error" if stored.verdict_id is not None else UNSTORABLE, stored)


def _retry(operation: Callable[[], T], dependency: str, context: PersistContext, job_id: str) -> T:
    return retry_forever(operation, dependency=dependency, stop=context.stop, watch=context.watch,
                         give_up_after_s=context.outage_patience_s, job_id=job_id)  # fmt: skip


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
