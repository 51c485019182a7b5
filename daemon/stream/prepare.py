"""Stage 1, in worker threads: message → ``Work``. Take the serving engine, parse the job, skip it if that
engine judged it before, fetch its media behind the guards, then decode, find faces and preprocess for that
engine (``pipeline.prepare``). The job keeps the engine: it is scored by it even if another is promoted.

Every failure of one job becomes that job's outcome (an error verdict later); only a database outage
blocks, retrying, since whether the job was judged before cannot be known without it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import structlog

from daemon.engine_watch import FaceDetectors
from daemon.pipeline import JudgeConfig, MediaJob, PreparedMedia, engine_identity, prepare
from daemon.repository import VerdictRepository
from daemon.stream.fetch import FetchPolicy, Resolver, fetch_job, redact_url, resolve_addresses
from daemon.stream.jobs import InvalidJob, JobV1, invalid_job_id, parse_job, readable_field, readable_job_id
from daemon.stream.metrics import StreamMetrics
from daemon.stream.offsets import Ticket
from daemon.stream.retry import DependencyWatch, retry_forever
from daemon.stream.work import Envelope, Work, put, take
from engines.backends import LoadedEngine
from engines.errors import PermanentError

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class PrepareContext:
    """What every prepare worker shares (each worker has its own face detectors)."""

    engines: Callable[[], LoadedEngine]  # the serving engine, read once per job
    config: JudgeConfig
    policy: FetchPolicy
    repository: VerdictRepository
    watch: DependencyWatch
    metrics: StreamMetrics
    stop: threading.Event
    is_current: Callable[[Ticket], bool]  # False once the ticket's partition was revoked
    resolve: Resolver = resolve_addresses


def prepare_message(envelope: Envelope, context: PrepareContext, detectors: FaceDetectors) -> Work:
    """The work one message becomes, for the engine serving now; never raises for a bad job or bad media."""
    engine = context.engines()
    try:
        job = parse_job(envelope.value)
    except InvalidJob as e:
        return _invalid(envelope, e, context, engine)
    stored = _stored_id(job.job_id, engine, context)
    config = _job_config(job, context.config)
    if stored is not None:
        return Work(envelope, job.job_id, config, stored_id=stored)
    if job.options.masks and engine.manifest.outputs.mask_logits is None:
        log.warning("masks_not_available", job_id=job.job_id, engine=engine.manifest.name)
    started = time.perf_counter()
    try:
        media = fetch_job(job, context.policy, context.resolve)
    except PermanentError as e:
        return Work(envelope, job.job_id, config, _failed(job, e.code, e.detail, engine))
    except Exception as e:  # a bug in a guard must fail this job, not the worker
        log.exception("fetch_failed_unexpectedly", job_id=job.job_id)
        return Work(envelope, job.job_id, config, _failed(job, "internal_error", repr(e), engine))
    fetched_ms = round((time.perf_counter() - started) * 1000.0, 2)
    try:
        detector = detectors.for_engine(engine.manifest)
    except Exception as e:  # e.g. after a switch to an engine whose detector cannot be built on this device
        log.exception("face_detector_unavailable", job_id=job.job_id, engine=engine.manifest.name)
        return Work(envelope, job.job_id, config, _failed(job, "internal_error", f"face detector: {e!r}", engine))
    prepared = prepare(media, engine.manifest, detector, config)
    prepared = replace(prepared, timings_ms={"fetch_media": fetched_ms, **prepared.timings_ms}, engine=engine)
    return Work(envelope, job.job_id, config, _check_media_type(job, prepared))


def _stored_id(job_id: str, engine: LoadedEngine, context: PrepareContext) -> int | None:
    """The engine's verdict for the job, if a previous delivery stored one (a re-delivery skips inference)."""
    identity = engine_identity(engine.manifest)
    return retry_forever(
        lambda: context.repository.find_id(job_id, identity),
        dependency="database", stop=context.stop, watch=context.watch, job_id=job_id,
    )  # fmt: skip


def _job_config(job: JobV1, config: JudgeConfig) -> JudgeConfig:
    """The daemon's judge settings with the job's own options: frames to sample, masks wanted."""
    frames = config.frames_per_video if job.options.frames is None else job.options.frames
    return replace(config, frames_per_video=frames, masks=config.masks or job.options.masks)


def _invalid(envelope: Envelope, error: InvalidJob, context: PrepareContext, engine: LoadedEngine) -> Work:
    """An error verdict for a message that is not a valid job, under its own id when it has a readable one."""
    ticket = envelope.ticket
    job_id = readable_job_id(envelope.value) or invalid_job_id(ticket.topic, ticket.partition, ticket.offset)
    url = readable_field(envelope.value, "media_url")
    uri = redact_url(url) if url else f"kafka:{ticket.topic}/{ticket.partition}/{ticket.offset}"
    stored = _stored_id(job_id, engine, context)
    if stored is not None:
        return Work(envelope, job_id, context.config, stored_id=stored)
    log.warning("invalid_job", job_id=job_id, topic=ticket.topic, partition=ticket.partition, offset=ticket.offset,
                detail=error.detail)  # fmt: skip
    job = MediaJob(job_id=job_id, uri=uri, source="kafka")
    prepared = PreparedMedia(job, None, None, outcome=("error", error.code, error.detail), engine=engine)
    return Work(envelope, job_id, context.config, prepared)


def _failed(job: JobV1, code: str, detail: str, engine: LoadedEngine) -> PreparedMedia:
    media = MediaJob(job.job_id, redact_url(job.media_url), source="kafka", metadata=dict(job.metadata))
    return PreparedMedia(media, None, None, outcome=("error", code, detail), engine=engine)


def _check_media_type(job: JobV1, prepared: PreparedMedia) -> PreparedMedia:
    """A job that declares video or image must get that; a mismatch is the producer's error, not a guess."""
    facts = prepared.facts
    if job.media_type == "auto" or facts is None or prepared.outcome is not None or facts.media_type == job.media_type:
        return prepared
    detail = f"the job says {job.media_type}, the media is {facts.media_type}"
    return replace(prepared, regions=(), pixels=None, outcome=("error", "media_type_mismatch", detail))


def prepare_worker(inbox: queue.Queue, outbox: queue.Queue, context: PrepareContext, detectors: FaceDetectors) -> None:
    """Thread body: prepare messages until ``STOP``; work for revoked partitions is dropped unprepared."""
    while True:
        envelope = take(inbox, context.stop)
        if not isinstance(envelope, Envelope):
            return
        if not context.is_current(envelope.ticket):
            continue
        started = time.perf_counter()
        work = prepare_message(envelope, context, detectors)
        context.metrics.stage_seconds.labels(stage="prepare").observe(time.perf_counter() - started)
        if not put(outbox, work, context.stop):
            return
