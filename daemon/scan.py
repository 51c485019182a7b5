"""``daemon scan``: the pipeline over local files, no Kafka needed.

A worker thread prepares media (fetch, decode, faces, preprocess) up to ``prefetch`` jobs ahead, while
the calling thread batches prepared jobs through the engine, aggregates, and stores each verdict — so
decode and face work hide behind inference. Each job is prepared for the engine serving when it starts
and judged by that engine, so an engine promoted during a scan takes over between jobs.

Every path gets one verdict, and nothing about one path stops the scan. Paths that cannot be read as files
get error verdicts with a code (``PATH_CODES``): ``symlink_loop``, ``unreadable`` (a file that cannot be
opened or read, a folder that cannot be listed), ``not_regular_file`` (a FIFO, socket or device: never
opened, since opening a FIFO blocks), ``not_found`` (a missing path, a dangling symlink). A failure while
preparing, judging or storing one file becomes that file's error verdict; a verdict the database refuses is
replaced by a ``store_failed`` one. ``daemon scan`` exits 0 when every file got a verdict from its media, 2
when some paths could not be read as files or some verdicts could not be stored, 1 when it could not run.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import queue
import stat
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import structlog

from deepsift.daemon.engine_watch import EngineSource, FaceDetectors, FixedEngine
from deepsift.daemon.paths import PATH_CODES, PathProblem, not_regular, path_problem
from deepsift.daemon.pipeline import JudgeConfig, MediaJob, PreparedMedia, infer, prepare, verdict
from deepsift.daemon.records import VerdictRecord
from deepsift.daemon.repository import VerdictRepository
from deepsift.engines.backends import EngineOutputs, LoadedEngine
from deepsift.engines.errors import DeepsiftError, RetryableError
from deepsift.engines.faces import MtcnnFaceDetector
from deepsift.engines.manifest import EngineManifest

log = structlog.get_logger(__name__)

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".3gp"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
MEDIA_SUFFIXES = VIDEO_SUFFIXES | IMAGE_SUFFIXES


class ScanFailed(DeepsiftError):
    """The scan itself broke (not one file): the files after the failure were not judged."""


@dataclass(frozen=True)
class ScanEntry:
    """A path that gets one verdict: a regular file to judge, or what is wrong with the path."""

    path: Path
    problem: PathProblem | None = None


def scan_entries(paths: Iterable[Path]) -> Iterator[ScanEntry]:
    """One entry per named file, in order, and per media file (by suffix) inside named folders, sorted.

    Nothing is opened here and nothing raises for a path: a path that cannot be judged is an entry with its
    problem. Named paths are always entries, whatever they are; inside folders, only names with a media suffix
    are (a FIFO called ``clip.mp4`` gets a verdict, a socket called ``.lock`` does not), plus folders that cannot
    be listed. Symlinked folders inside a folder are not followed, so a link to a parent cannot loop.
    """
    for path in paths:
        try:
            is_folder = stat.S_ISDIR(os.stat(path).st_mode)
        except OSError as e:
            yield ScanEntry(path, path_problem(e, path))
            continue
        yield from _folder_entries(path) if is_folder else [inspect_file(path)]


def expand_paths(paths: Sequence[Path]) -> list[Path]:
    """Files named on the command line are always scanned; folders contribute their media files, recursively."""
    return [entry.path for entry in scan_entries(paths)]


def inspect_file(path: Path) -> ScanEntry:
    """The entry for a path that should be a file, from its ``stat`` (following symlinks); it is not opened."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        return ScanEntry(path, path_problem(e, path))
    return ScanEntry(path) if stat.S_ISREG(mode) else ScanEntry(path, not_regular(path, mode))


def _folder_entries(folder: Path) -> list[ScanEntry]:
    found: list[ScanEntry] = []

    def unlisted(e: OSError) -> None:
        where = Path(e.filename) if e.filename else folder
        found.append(ScanEntry(where, path_problem(e, where, doing="list folder")))

    # os.walk lists symlinks to folders among the folders and, without followlinks, does not enter them;
    # dangling links and link loops are among the files.
    for top, _folders, names in os.walk(folder, onerror=unlisted):
        found += [inspect_file(Path(top, n)) for n in names if n[0] != "." and Path(n).suffix.lower() in MEDIA_SUFFIXES]
    return sorted(found, key=lambda entry: entry.path)


def scan_job(entry: ScanEntry) -> tuple[MediaJob, PathProblem | None]:
    """A job for a scanned path, and why it cannot be judged, if it cannot. Its id is stable for the same path and
    content, so a re-scan with the same engine is idempotent, while changed content gets a new verdict.

    A file is read here once, for its hash; a path found to be no regular file is never opened for reading.
    """
    named = Path(os.path.abspath(entry.path))
    if entry.problem is None:
        resolved = Path(os.path.realpath(entry.path))
        content, problem = _content_sha256(resolved, named)
        if problem is None:
            return _job(resolved, content), None
    else:
        problem = entry.problem
    # A path that cannot be read keeps the name it was given: a broken link is the problem, not its target.
    return _job(named, None), problem


def _job(path: Path, content: str | None) -> MediaJob:
    key = hashlib.sha256(f"{path}\0{content}".encode()).hexdigest()[:32]
    return MediaJob(job_id=f"scan:{key}", uri=path.as_uri(), path=path, source="scan", known_sha256=content)


def _content_sha256(path: Path, named: Path) -> tuple[str | None, PathProblem | None]:
    """The sha256 of the file at ``path`` (``named`` resolved), or why it cannot be read. Opened non-blocking and
    checked with ``fstat``, so a file swapped for a FIFO after the walk cannot block the scan."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        return None, _via(path_problem(e, named), path, named)
    with open(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            return None, _via(not_regular(named, mode), path, named)
        os.set_blocking(fd, True)
        try:
            return hashlib.file_digest(f, "sha256").hexdigest(), None
        except OSError as e:
            return None, _via(path_problem(e, named), path, named)


def _via(problem: PathProblem, resolved: Path, named: Path) -> PathProblem:
    return problem if resolved == named else replace(problem, detail=f"{problem.detail} (it leads to {resolved})")


@dataclass(frozen=True)
class ScanResult:
    """One path's verdict as stored (``verdict_id``), or as judged when it could not be stored (``None``).

    ``store_error`` says why the judged verdict was not stored; ``verdict`` is then the ``store_failed`` verdict
    stored in its place, or the judged one when nothing could be stored."""

    verdict: VerdictRecord
    verdict_id: int | None
    created: bool
    path: Path | None
    store_error: str | None = None

    @property
    def path_problem(self) -> bool:
        """The path could not be read as a file (as opposed to media judged, or found broken)."""
        return self.verdict.status == "error" and self.verdict.code in PATH_CODES


def exit_code(results: Iterable[ScanResult]) -> int:
    """0: every file got a verdict from its media; 2: some paths could not be read as files, or some verdicts
    could not be stored."""
    return 2 if any(r.path_problem or r.store_error for r in results) else 0


_DONE = object()


@dataclass
class _WorkerState:
    finished: bool = False  # every entry was handed over: a _DONE without it means the worker broke
    error: str = "it ended early"


def _prepare_ahead(
    entries: Iterable[ScanEntry],
    run: Callable[[MediaJob, PathProblem | None], PreparedMedia],
    out: queue.Queue,
    stop: threading.Event,
    state: _WorkerState,
) -> None:
    try:
        for entry in entries:
            if stop.is_set():
                return
            out.put(_prepare_entry(entry, run))
        state.finished = True
    except Exception as e:
        log.exception("prepare_worker_failed")
        state.error = repr(e)
    finally:
        out.put(_DONE)


def _prepare_entry(entry: ScanEntry, run: Callable[[MediaJob, PathProblem | None], PreparedMedia]) -> PreparedMedia:
    """The prepared job for one path; any failure here is this path's error verdict, never the end of the scan."""
    job = None
    try:
        job, problem = scan_job(entry)
        with structlog.contextvars.bound_contextvars(job_id=job.job_id, uri=job.uri):
            return run(job, problem)
    except Exception as e:
        log.exception("prepare_failed", path=str(entry.path))
        job = job or _job(Path(os.path.abspath(entry.path)), None)
        return PreparedMedia(job, None, None, outcome=("error", "internal_error", f"preparing failed: {e!r}"))


def _batches(
    prepared: queue.Queue, max_frames: int, alive: Callable[[], bool] = lambda: True
) -> Iterator[list[PreparedMedia]]:
    """Group prepared jobs that are already waiting into one engine batch of at most ``max_frames`` frames.
    Ends at ``_DONE``, or when the worker is no longer ``alive`` and nothing is left."""
    carry = None
    while True:
        first, carry = (carry if carry is not None else _take(prepared, alive)), None
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


def _take(prepared: queue.Queue, alive: Callable[[], bool]) -> object:
    while True:
        try:
            return prepared.get(timeout=0.5)
        except queue.Empty:
            if not alive():
                try:
                    return prepared.get_nowait()
                except queue.Empty:
                    return _DONE


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


def _prepare_path(
    job: MediaJob, problem: PathProblem | None, engines: EngineSource, detectors: FaceDetectors, config: JudgeConfig
) -> PreparedMedia:
    if problem is None:
        return prepare_for(job, engines, detectors, config)
    return PreparedMedia(job, None, None, outcome=("error", problem.code, problem.detail), engine=engines.current())


Judge = Callable[[PreparedMedia, EngineOutputs | Exception | None, EngineManifest, JudgeConfig], VerdictRecord]


def run_scan(
    paths: Sequence[Path],
    engine: LoadedEngine | EngineSource,
    repository: VerdictRepository,
    config: JudgeConfig,
    detector: MtcnnFaceDetector | FaceDetectors | None = None,
    prefetch: int = 2,
    judge: Judge = verdict,
) -> Iterator[ScanResult]:
    """Judge every file under ``paths`` and store one verdict per file; yields results as they are stored.

    ``engine`` is one engine, or a source whose engine may change between jobs (``EngineWatcher``);
    ``detector`` is the face detector to use, or detectors made per engine; ``judge`` turns a prepared job and
    its engine outputs into the verdict. Raises ``ScanFailed`` when the scan itself breaks, after the verdicts
    stored until then.
    """
    engines = FixedEngine(engine) if isinstance(engine, LoadedEngine) else engine
    detectors = detector if isinstance(detector, FaceDetectors) else FaceDetectors(given=[detector] if detector else [])
    prepared: queue.Queue = queue.Queue(maxsize=prefetch)
    stop, state = threading.Event(), _WorkerState()
    worker = threading.Thread(
        target=_prepare_ahead,
        args=(scan_entries(paths), partial(_prepare_path, engines=engines, detectors=detectors, config=config),
              prepared, stop, state),
        name="prepare",
        daemon=True,
    )  # fmt: skip
    worker.start()
    try:
        for batch in _batches(prepared, max(engines.current().manifest.batch.opt, 1), worker.is_alive):
            yield from _judge_batch(batch, engines, repository, config, judge)
        if not state.finished:
            raise ScanFailed(f"the prepare worker broke ({state.error}); the files after it were not judged")
    finally:
        stop.set()
        while worker.is_alive():
            with contextlib.suppress(queue.Empty):
                prepared.get(timeout=0.1)


def _judge_batch(
    batch: list[PreparedMedia], engines: EngineSource, repository: VerdictRepository, config: JudgeConfig, judge: Judge
) -> Iterator[ScanResult]:
    try:
        scores: Iterator[EngineOutputs | Exception] = iter(infer(engines.current(), batch, masks=config.masks))
    except Exception as e:  # a bug in batching: each job of the batch gets an inference_failed verdict
        log.exception("batch_inference_failed", jobs=len(batch))
        scores = itertools.repeat(e)
    for item in batch:
        manifest = (item.engine or engines.current()).manifest
        record = _judged(item, next(scores) if item.pixels is not None else None, manifest, config, judge)
        result = _store(repository, record, item.job.path)
        log.debug("verdict", job_id=record.job_id, uri=record.media_uri, status=result.verdict.status,
                  label=record.label, p_fake=record.p_fake, code=result.verdict.code,
                  engine_version=record.engine.version, stored=result.verdict_id is not None)  # fmt: skip
        yield result


def _judged(
    item: PreparedMedia,
    scores: EngineOutputs | Exception | None,
    manifest: EngineManifest,
    config: JudgeConfig,
    judge: Judge,
) -> VerdictRecord:
    """One job's verdict; a failure here (a bug) is that job's error verdict, never the end of the scan."""
    try:
        return judge(item, scores, manifest, config)
    except Exception as e:
        log.exception("verdict_failed", job_id=item.job.job_id)
        failed = replace(item, regions=(), pixels=None, outcome=("error", "internal_error", f"verdict failed: {e!r}"))
        return verdict(failed, None, manifest, config)


def _store(repository: VerdictRepository, record: VerdictRecord, path: Path | None) -> ScanResult:
    """Store the verdict. One the database refuses is replaced by a ``store_failed`` error verdict, as the stream
    daemon does; when the database cannot be reached, or refuses that too, the result says so and the scan goes
    on."""
    try:
        saved = repository.save(record)
        return ScanResult(record, saved.id, saved.created, path)
    except RetryableError as e:
        log.error("verdict_not_stored", job_id=record.job_id, uri=record.media_uri, error=str(e))
        return ScanResult(record, None, False, path, store_error=str(e))
    except Exception as e:
        log.exception("verdict_refused", job_id=record.job_id, uri=record.media_uri)
        reason = repr(e)
    failed = replace(
        record, status="error", code="store_failed", detail=f"the database refused the verdict: {reason}",
        label=None, p_fake=None, class_probs=None, frames=(), tracks=(), masks=(),
    )  # fmt: skip
    try:
        saved = repository.save(failed)
        return ScanResult(failed, saved.id, saved.created, path, store_error=reason)
    except Exception as e:
        log.exception("verdict_not_stored", job_id=record.job_id, uri=record.media_uri)
        return ScanResult(record, None, False, path, store_error=f"{reason}; then {e!r}")
