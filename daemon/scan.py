"""``daemon scan``: the pipeline over local files, no Kafka needed.

A worker thread prepares media (fetch, decode, faces, preprocess) up to ``prefetch`` jobs ahead, while
the calling thread batches prepared jobs through the engine, aggregates, and stores each verdict — so
decode and face work hide behind inference. Each job is prepared for the engine serving when it starts
and judged by that engine, so an engine promoted during a scan takes over between jobs.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import structlog

from daemon.engine_watch import EngineSource, FaceDetectors, FixedEngine
from daemon.pipeline import JudgeConfig, MediaJob, PreparedMedia, infer, prepare, verdict
from daemon.records import VerdictRecord
from daemon.repository import VerdictRepository
from engines.backends import LoadedEngine
from engines.faces import MtcnnFaceDetector
from engines.manifest import sha256_file

log = structlog.get_logger(__name__)

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".3gp"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
MEDIA_SUFFIXES = VIDEO_SUFFIXES | IMAGE_SUFFIXES


def expand_paths(paths: Sequence[Path]) -> list[Path]:
    """Files named on the command line are always scanned; folders contribute their media files, recursively."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES and p.name[0] != "."
            )
        else:
            found.append(path)
    return found


def scan_job(path: Path) -> MediaJob:
    """A job for a local file. Its id is stable for the same path and content, so a re-scan with the same
    engine is idempotent, while changed content gets a new verdict."""
    resolved = path.resolve()
    content = sha256_file(resolved) if resolved.is_file() else None
    key = hashlib.sha256(f"{resolved}\0{content}".encode()).hexdigest()[:32]
    return MediaJob(job_id=f"scan:{key}", uri=resolved.as_uri(), path=resolved, source="scan", known_sha256=content)


@dataclass(frozen=True)
class ScanResult:
    verdict: VerdictRecord
    verdict_id: int
    created: bool
    path: Path | None


_DONE = object()


def _prepare_ahead(
    jobs: Iterable[MediaJob], run: Callable[[MediaJob], PreparedMedia], out: queue.Queue, stop: threading.Event
) -> None:
    try:
        for job in jobs:
            if stop.is_set():
                return
            with structlog.contextvars.bound_contextvars(job_id=job.job_id, uri=job.uri):
                out.put(run(job))
    finally:
        out.put(_DONE)


def _batches(prepared: queue.Queue, max_frames: int) -> Iterator[list[PreparedMedia]]:
    """Group prepared jobs that are already waiting into one engine batch of at most ``max_frames`` frames."""
    carry = None
    while True:
        first, carry = (carry if carry is not None else prepared.get()), None
        if first is _DONE:
            return
        batch, frames = [first], _frames(first)
        while frames < max_frames:
            try:
                nxt = prepared.get_nowait()
            except queue.Empty:
                break
            if nxt is _DONE or frames + _frames(nxt) > max_frames:
                carry = nxt
                break
            batch.append(nxt)
            frames += _frames(nxt)
        yield batch


def _frames(item: PreparedMedia) -> int:
    return 0 if item.pixels is None else len(item.pixels)


def prepare_for(job: MediaJob, engines: EngineSource, detectors: FaceDetectors, config: JudgeConfig) -> PreparedMedia:
    """Prepare ``job`` for the engine serving now, and keep that engine with it to score it."""
    engine = engines.current()
    try:
        detector = detectors.for_engine(engine.manifest)
    except Exception as e:  # e.g. a CUDA device that is not there: this job's error, not a silent end of the scan
        log.exception("face_detector_unavailable", job_id=job.job_id)
        outcome = ("error", "internal_error", f"face detector unavailable: {e!r}")
        return PreparedMedia(job, None, None, outcome=outcome, engine=engine)
    return replace(prepare(job, engine.manifest, detector, config), engine=engine)


def run_scan(
    paths: Sequence[Path],
    engine: LoadedEngine | EngineSource,
    repository: VerdictRepository,
    config: JudgeConfig,
    detector: MtcnnFaceDetector | FaceDetectors | None = None,
    prefetch: int = 2,
) -> Iterator[ScanResult]:
    """Judge every file under ``paths`` and store one verdict per file; yields results as they are stored.

    ``engine`` is one engine, or a source whose engine may change between jobs (``EngineWatcher``);
    ``detector`` is the face detector to use, or detectors made per engine.
    """
    engines = FixedEngine(engine) if isinstance(engine, LoadedEngine) else engine
    detectors = detector if isinstance(detector, FaceDetectors) else FaceDetectors(given=[detector] if detector else [])
    jobs = (scan_job(p) for p in expand_paths(paths))
    prepared: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()
    worker = threading.Thread(
        target=_prepare_ahead,
        args=(jobs, lambda job: prepare_for(job, engines, detectors, config), prepared, stop),
        name="prepare",
        daemon=True,
    )
    worker.start()
    try:
        for batch in _batches(prepared, max(engines.current().manifest.batch.opt, 1)):
            scores = iter(infer(engines.current(), batch, masks=config.masks))
            for item in batch:
                manifest = (item.engine or engines.current()).manifest
                record = verdict(item, next(scores) if item.pixels is not None else None, manifest, config)
                saved = repository.save(record)
                log.debug("verdict", job_id=record.job_id, uri=record.media_uri, status=record.status,
                         label=record.label, p_fake=record.p_fake, code=record.code,
                         engine_version=record.engine.version)  # fmt: skip
                yield ScanResult(record, saved.id, saved.created, item.job.path)
    finally:
        stop.set()
        while worker.is_alive():
            with contextlib.suppress(queue.Empty):
                prepared.get(timeout=0.1)
