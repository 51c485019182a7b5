"""Stage 1, in worker threads: delivery → ``Work``. Take the serving engine; for a message, parse the job,
skip it if that engine judged it before (unless the producer re-used its id for other media), refuse what
it may not ask for, count the delivery as started, fetch its media behind the guards; for a scanned path,
hash it into its job (``sources.files.scan_job``) and skip it if that engine judged it before. Then decode,
find faces and preprocess for that engine (``pipeline.prepare``). The job keeps the engine: it is scored by
it even if another is promoted.

Every failure of one job becomes that job's outcome (an error verdict later), whatever raised it; only a
database outage blocks, retrying, since whether the job was judged before cannot be known without it.
A message whose earlier deliveries started and never finished (it killed the daemons that took it) is
answered ``poison_job`` instead of being tried again (``daemon.attempts``).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import structlog

from deepsift.daemon.attempts import JobAttempts
from deepsift.daemon.engine_watch import FaceDetectors
from deepsift.daemon.paths import ScanEntry
from deepsift.daemon.pipeline import JudgeConfig, MediaJob, Outcome, PreparedMedia, engine_identity, prepare
from deepsift.daemon.pipeline.fetch import FetchPolicy, Resolver, fetch, fetch_job, redact_url, resolve_addresses
from deepsift.daemon.repository import VerdictRepository
from deepsift.daemon.sources.files import path_job, scan_job
from deepsift.daemon.stream.jobs import InvalidJob, JobV1, invalid_job_id, parse_job, readable_field, readable_job_id
from deepsift.daemon.stream.metrics import StreamMetrics
from deepsift.daemon.stream.offsets import Ticket
from deepsift.daemon.stream.retry import Abandoned, DependencyWatch, retry_forever
from deepsift.daemon.stream.signals import reuse_lookup, with_near_duplicates
from deepsift.daemon.stream.work import Envelope, Work, put, take
from deepsift.daemon.uploads import NearDuplicatePolicy, ReusePolicy, UploadHistory
from deepsift.engines.backends import LoadedEngine
from deepsift.engines.errors import PermanentError
from deepsift.engines.preprocess import InputContract

log = structlog.get_logger(__name__)

MAX_DETAIL_CHARS = 1000  # of an unexpected error's repr: a UnicodeEncodeError's carries the whole string
SUSPECT_WAIT_S = 0.1  # how often a suspect waiting for its turn looks whether the daemon stops

T = TypeVar("T")


@dataclass(frozen=True)
class JobGuards:
    """What a job may ask for, and how many deliveries of one message may start without finishing."""

    attempts: JobAttempts
    max_frames: int  # settings.max_frames_per_job
    max_attempts: int  # settings.poison_max_attempts
    suspects: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)  # one at a time


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
    guards: JobGuards
    resolve: Resolver = resolve_addresses
    history: UploadHistory | None = None  # re-uploads and near-duplicates (daemon.uploads); None: neither
    reuse: ReusePolicy = field(default_factory=ReusePolicy)
    near: NearDuplicatePolicy = field(default_factory=NearDuplicatePolicy)
    shadows: tuple[InputContract, ...] = ()  # the shadow engines' input contracts (pipeline.shadow)


def prepare_message(envelope: Envelope, context: PrepareContext, detectors: FaceDetectors) -> Work:
    """The work one delivery becomes, for the engine serving now; never raises for a bad job or bad media."""
    engine = context.engines()
    if envelope.entry is not None:
        return _prepare_path(envelope, envelope.entry, context, detectors, engine)
    try:
        job = parse_job(envelope.value)
    except InvalidJob as e:
        return _invalid(envelope, e, context, engine)
    stored = _stored_id(job.job_id, engine, context)
    config = _job_config(job, context.config)
    if stored is not None:
        return _judged_before(envelope, job, config, stored, context, engine)
    refused = _too_many_frames(job, context.guards)
    if refused is not None:
        return Work(envelope, job.job_id, config, _failed(job, *refused, engine))
    with _started(envelope, job.job_id, context) as poisoned:
        if poisoned is not None:
            return Work(envelope, job.job_id, config, _failed(job, *poisoned, engine))
        return Work(envelope, job.job_id, config, _prepare_media(job, config, context, detectors, engine))


def _prepare_path(
    envelope: Envelope, entry: ScanEntry, context: PrepareContext, detectors: FaceDetectors, engine: LoadedEngine
) -> Work:
    """A scanned path: skipped when this engine judged the same path and content before; a path that cannot be
    read as a file is its problem's error verdict."""
    job, problem = scan_job(entry)
    with structlog.contextvars.bound_contextvars(job_id=job.job_id, uri=job.uri):
        stored = _stored_id(job.job_id, engine, context)
        if stored is not None:
            return Work(envelope, job.job_id, context.config, stored_id=stored)
        if problem is not None:
            outcome = Outcome.error(problem.code, problem.detail)
            return Work(
                envelope, job.job_id, context.config, PreparedMedia(job, None, None, outcome=outcome, engine=engine)
            )
        prepared = _prepare_fetched(job, context.config, detectors, engine, context)
        return Work(envelope, job.job_id, context.config, prepared)


def _prepare_media(
    job: JobV1, config: JudgeConfig, context: PrepareContext, detectors: FaceDetectors, engine: LoadedEngine
) -> PreparedMedia:
    """Fetch behind the guards, then decode, find faces and preprocess for ``engine``; failures are outcomes."""
    if job.options.masks and engine.manifest.outputs.mask_logits is None:
        log.warning("masks_not_available", job_id=job.job_id, engine=engine.manifest.name)
    started = time.perf_counter()
    try:
        media = fetch_job(job, context.policy, context.resolve)
    except PermanentError as e:
        return _failed(job, e.code, e.detail, engine)
    except Exception as e:  # a bug in a guard must fail this job, not the worker
        log.exception("fetch_failed_unexpectedly", job_id=job.job_id)
        return _failed(job, "internal_error", repr(e), engine)
    located_ms = round((time.perf_counter() - started) * 1000.0, 2)  # the guards, and a download
    prepared = _prepare_fetched(media, config, detectors, engine, context)
    fetch_ms = round(located_ms + prepared.timings_ms.get("fetch", 0.0), 2)  # one fetch: located, bounded, hashed
    prepared = replace(prepared, timings_ms={**prepared.timings_ms, "fetch": fetch_ms})
    return _check_media_type(job, prepared)


def _prepare_fetched(
    media: MediaJob, config: JudgeConfig, detectors: FaceDetectors, engine: LoadedEngine, context: PrepareContext
) -> PreparedMedia:
    """Decode, find faces and preprocess media at hand (a local file, or bytes fetched) for ``engine``; an exact
    re-upload is answered from its earlier verdict instead, and near-duplicates are looked up (``signals``)."""
    try:
        detector = detectors.for_engine(engine.manifest)
    except Exception as e:  # e.g. after a switch to an engine whose detector cannot be built on this device
        log.exception("face_detector_unavailable", job_id=media.job_id, engine=engine.manifest.name)
        outcome = Outcome.error("internal_error", f"face detector: {e!r}")
        return PreparedMedia(media, None, None, outcome=outcome, engine=engine)
    reuse = reuse_lookup(context, engine, config, media.job_id)
    prepared = replace(prepare(media, engine.manifest, detector, config, reuse, context.shadows), engine=engine)
    return with_near_duplicates(prepared, context)


def _too_many_frames(job: JobV1, guards: JobGuards) -> tuple[str, str] | None:
    """A job may not ask for more frames than the daemon allows: 1,024 frames of a 720p clip are 4.5 GiB."""
    frames = job.options.frames
    if frames is None or frames <= guards.max_frames:
        return None
    return "too_many_frames", f"the job asks for {frames} frames; the limit is {guards.max_frames} (max_frames_per_job)"


@contextmanager
def _started(envelope: Envelope, job_id: str, context: PrepareContext) -> Iterator[tuple[str, str] | None]:
    """Count this delivery as started, before any media is touched; yields the poison refusal, or None to go on.

    Called only for messages without a stored verdict, so each earlier start died before its verdict was
    stored: its daemon was killed (OOM, a native crash, the watchdog) while it held the message, which is the
    culprit or a bystander that was in flight beside it. Such suspects run one at a time (fresh jobs go on
    beside them) and a start is counted only once it runs, so a bystander stops being counted while the
    culprit's count climbs to ``max_attempts``."""
    ticket, guards = envelope.ticket, context.guards
    earlier = _with_database(lambda: guards.attempts.attempts(ticket.topic, ticket.partition, ticket.offset),
                             context, job_id)  # fmt: skip
    with _alone(guards.suspects, context.stop) if earlier else nullcontext():
        if earlier:
            log.warning("suspect_job", job_id=job_id, topic=ticket.topic, partition=ticket.partition,
                        offset=ticket.offset, unfinished=earlier)  # fmt: skip
        yield _poisoned(envelope, job_id, context)


@contextmanager
def _alone(lock: threading.Lock, stop: threading.Event) -> Iterator[None]:
    """Hold the suspects' lock, unless the daemon stops first (the message then stays uncommitted)."""
    while not lock.acquire(timeout=SUSPECT_WAIT_S):
        if stop.is_set():
            raise Abandoned("stopping while a suspect job waited for its turn")
    try:
        yield
    finally:
        lock.release()


def _poisoned(envelope: Envelope, job_id: str, context: PrepareContext) -> tuple[str, str] | None:
    """Count the start; ``poison_job`` and why when more than ``max_attempts`` deliveries have started."""
    ticket, guards = envelope.ticket, context.guards
    attempts = _with_database(
        lambda: guards.attempts.started(ticket.topic, ticket.partition, ticket.offset, job_id), context, job_id
    )
    if attempts <= guards.max_attempts:
        return None
    unfinished = attempts - 1
    log.error("poison_job", job_id=job_id, topic=ticket.topic, partition=ticket.partition, offset=ticket.offset,
              unfinished=unfinished)  # fmt: skip
    detail = (
        f"{unfinished} deliveries of this message started without finishing (the daemon died while holding it); "
        f"poison_max_attempts is {guards.max_attempts}, so it is not tried again"
    )
    return "poison_job", detail


def _judged_before(
    envelope: Envelope, job: JobV1, config: JudgeConfig, stored: int, context: PrepareContext, engine: LoadedEngine
) -> Work:
    """Skip a job this engine judged before, unless its id now names other media: that is answered, once.

    The answer is stored under a derived id (the id and this media's hash), because verdicts are unique per
    job and engine: a re-delivery of this same message then finds it and is skipped in turn."""
    reused = _reused_media(job, stored, context)
    if reused is None:
        return Work(envelope, job.job_id, config, stored_id=stored)
    earlier, sha = reused
    derived = f"{job.job_id}#sha256:{sha[:16]}"
    answered = _stored_id(derived, engine, context)
    if answered is not None:
        return Work(envelope, derived, config, stored_id=answered)
    log.warning("job_id_reused", job_id=job.job_id, verdict_id=stored, earlier_sha256=earlier, sha256=sha)
    detail = f"job id {job.job_id} was judged (verdict {stored}) for media sha256 {earlier}; this media is {sha}"
    media = MediaJob(derived, redact_url(job.media_url), source="kafka", metadata=dict(job.metadata))
    prepared = PreparedMedia(media, sha, None, outcome=Outcome.error("job_id_reused", detail), engine=engine)
    return Work(envelope, derived, config, prepared)


def _reused_media(job: JobV1, stored: int, context: PrepareContext) -> tuple[str, str] | None:
    """(the judged media's sha256, this delivery's) when they differ; None when they agree or cannot be compared.

    The job's declared ``content_sha256`` is trusted (no fetch); without one the media is fetched and hashed
    (no decode). When the earlier verdict has no hash (it failed before reading its media) or this media
    cannot be fetched any more, the delivery is taken for a re-delivery of the same job: skipped, as before."""
    earlier = _with_database(lambda: context.repository.get(stored).media_sha256, context, job.job_id)
    if earlier is None:
        return None
    sha = job.content_sha256 or _fetched_sha256(job, context)
    return None if sha is None or sha == earlier else (earlier, sha)


def _fetched_sha256(job: JobV1, context: PrepareContext) -> str | None:
    try:
        return fetch(fetch_job(job, context.policy, context.resolve), context.config.max_media_bytes)[1]
    except Exception as e:  # gone, refused or a bug: nothing to compare, so the stored verdict stands
        log.info("reuse_check_skipped", job_id=job.job_id, error=repr(e)[:MAX_DETAIL_CHARS])
        return None


def _stored_id(job_id: str, engine: LoadedEngine, context: PrepareContext) -> int | None:
    """The engine's verdict for the job, if a previous delivery stored one (a re-delivery skips inference)."""
    identity = engine_identity(engine.manifest)
    return _with_database(lambda: context.repository.find_id(job_id, identity), context, job_id)


def _with_database(operation: Callable[[], T], context: PrepareContext, job_id: str) -> T:
    """Retried while the database is down: what it answers decides what the job becomes."""
    return retry_forever(operation, dependency="database", stop=context.stop, watch=context.watch, job_id=job_id)


def _job_config(job: JobV1, config: JudgeConfig) -> JudgeConfig:
    """The daemon's judge settings with the job's own options: frames to sample, masks wanted."""
    frames = config.frames_per_video if job.options.frames is None else job.options.frames
    return replace(config, frames_per_video=frames, masks=config.masks or job.options.masks)


def _invalid(envelope: Envelope, error: InvalidJob, context: PrepareContext, engine: LoadedEngine) -> Work:
    """An error verdict for a message that is not a valid job, under its own id when it has a readable one."""
    ticket = envelope.ticket
    job_id = _safe_job_id(envelope)
    url = readable_field(envelope.value, "media_url")
    uri = redact_url(url) if url else f"kafka:{ticket.topic}/{ticket.partition}/{ticket.offset}"
    stored = _stored_id(job_id, engine, context)
    if stored is not None:
        return Work(envelope, job_id, context.config, stored_id=stored)
    with _started(envelope, job_id, context) as poisoned:
        code, detail = poisoned or (error.code, error.detail)
    log.warning("invalid_job", job_id=job_id, topic=ticket.topic, partition=ticket.partition, offset=ticket.offset,
                detail=error.detail)  # fmt: skip
    job = MediaJob(job_id=job_id, uri=uri, source="kafka")
    prepared = PreparedMedia(job, None, None, outcome=Outcome.error(code, detail), engine=engine)
    return Work(envelope, job_id, context.config, prepared)


def _safe_job_id(envelope: Envelope) -> str:
    """The message's own job id when it is readable and fit for SQL and Kafka keys, else one from its position
    (``readable_job_id`` never raises, whatever the bytes: this also names a message whose preparation failed)."""
    ticket = envelope.ticket
    return readable_job_id(envelope.value) or invalid_job_id(ticket.topic, ticket.partition, ticket.offset)


def _failed(job: JobV1, code: str, detail: str, engine: LoadedEngine) -> PreparedMedia:
    media = MediaJob(job.job_id, redact_url(job.media_url), source="kafka", metadata=dict(job.metadata))
    return PreparedMedia(media, None, None, outcome=Outcome.error(code, detail), engine=engine)


def _check_media_type(job: JobV1, prepared: PreparedMedia) -> PreparedMedia:
    """A job that declares video or image must get that; a mismatch is the producer's error, not a guess."""
    if prepared.reused is not None:  # not decoded: the earlier verdict of the same bytes knows what they are
        media_type = prepared.reused.record.media_type
    else:
        media_type = prepared.facts.media_type if prepared.facts is not None else None
    if job.media_type == "auto" or media_type is None or prepared.outcome is not None or media_type == job.media_type:
        return prepared
    detail = f"the job says {job.media_type}, the media is {media_type}"
    return replace(prepared, regions=(), pixels=None, reused=None,
                   outcome=Outcome.error("media_type_mismatch", detail))  # fmt: skip


def prepare_guarded(envelope: Envelope, context: PrepareContext, detectors: FaceDetectors) -> Work:
    """``prepare_message``, with anything it raises (a bug, a crafted message) as that message's error verdict.

    A crashed stage would stop the daemon, and the message would crash the next one too. Only ``Abandoned``
    (the daemon stops while the database is down) passes: the message then stays uncommitted."""
    try:
        return prepare_message(envelope, context, detectors)
    except Abandoned:
        raise
    except Exception as e:
        ticket = envelope.ticket
        log.exception("prepare_failed_unexpectedly", topic=ticket.topic, partition=ticket.partition,
                      offset=ticket.offset)  # fmt: skip
        return _internal_error(envelope, context.config, repr(e)[:MAX_DETAIL_CHARS])


def _internal_error(envelope: Envelope, config: JudgeConfig, detail: str) -> Work:
    """An ``internal_error`` outcome that reads as little of the delivery as it can (that may be what failed).

    It names no engine: the serving one signs the verdict (``batching``)."""
    ticket = envelope.ticket
    if envelope.entry is not None:  # a scanned path, by the name it was given
        media = path_job(Path(os.path.abspath(envelope.entry.path)), None)
    else:
        media = MediaJob(
            _safe_job_id(envelope), f"kafka:{ticket.topic}/{ticket.partition}/{ticket.offset}", source="kafka"
        )
    outcome = Outcome.error("internal_error", detail)
    return Work(envelope, media.job_id, config, PreparedMedia(media, None, None, outcome=outcome))


def prepare_worker(inbox: queue.Queue, outbox: queue.Queue, context: PrepareContext, detectors: FaceDetectors) -> None:
    """Thread body: prepare messages until ``STOP``; work for revoked partitions is dropped unprepared."""
    while True:
        envelope = take(inbox, context.stop)
        if not isinstance(envelope, Envelope):
            return
        if not context.is_current(envelope.ticket):
            continue
        started = time.perf_counter()
        work = prepare_guarded(envelope, context, detectors)
        context.metrics.stage_seconds.labels(stage="prepare").observe(time.perf_counter() - started)
        if not put(outbox, work, context.stop):
            return
