"""``daemon scan``: local files through the pipeline loop of ``daemon run``, from the ``files`` source.

The very stages of the stream daemon judge each path (prepare workers, micro-batches, one persist thread),
with an acknowledgement that does nothing and no Kafka: results are reported in scan order as they are
stored. Each job is prepared for the engine serving when it starts and judged by that engine, so an engine
promoted during a scan takes over between jobs; a file this engine judged before (same path and content) is
not judged again. Every job of a scan counts as submitted at the scan's start (``verdicts.submitted_at``; a
file's modification time says when it was written, not when it was handed in), so ``queue_wait`` is how long a file
waited behind the files before it and ``total`` the time until its verdict, beside the stage timings (``infer``
included, as in ``daemon run``).

Every path gets one verdict, and nothing about one path stops the scan. Paths that cannot be read as files
get error verdicts with a code (``PATH_CODES``): ``symlink_loop``, ``unreadable`` (a file that cannot be
opened or read, a folder that cannot be listed), ``not_regular_file`` (a FIFO, socket or device: never
opened, since opening a FIFO blocks), ``not_found`` (a missing path, a dangling symlink). A failure while
preparing, judging or storing one file becomes that file's error verdict; a verdict the database refuses is
replaced by a ``store_failed`` one, and a database that stays unreachable for ``outage_patience_s`` leaves that
verdict unstored. ``daemon scan`` exits 0 when every file got a verdict from its media, 2 when some paths could
not be read as files or some verdicts could not be stored, 1 when it could not run or broke off.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import unquote, urlsplit

import structlog

from deepsift.daemon.engine_watch import EngineSource, FaceDetectors, FixedEngine
from deepsift.daemon.paths import PATH_CODES
from deepsift.daemon.pipeline import JudgeConfig, verdict
from deepsift.daemon.records import VerdictRecord
from deepsift.daemon.repository import VerdictRepository
from deepsift.daemon.settings import Settings
from deepsift.daemon.sources.files import FilesSource
from deepsift.daemon.stream.batching import Judge
from deepsift.daemon.stream.health import Health
from deepsift.daemon.stream.metrics import StreamMetrics
from deepsift.daemon.stream.runner import Lifecycle, PipelineLoop, Services
from deepsift.daemon.stream.sink import NoSink
from deepsift.daemon.stream.work import Completion
from deepsift.engines.backends import LoadedEngine
from deepsift.engines.errors import DeepsiftError
from deepsift.engines.faces import MtcnnFaceDetector

log = structlog.get_logger(__name__)

OUTAGE_PATIENCE_S = 30.0  # how long one verdict waits for an unreachable database before it is reported unstored


class ScanFailed(DeepsiftError):
    """The scan itself broke (not one file): the files after the failure were not judged."""


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


def run_scan(
    paths: Sequence[Path],
    engine: LoadedEngine | EngineSource,
    repository: VerdictRepository,
    config: JudgeConfig,
    detector: MtcnnFaceDetector | FaceDetectors | None = None,
    settings: Settings | None = None,
    judge: Judge = verdict,
    outage_patience_s: float = OUTAGE_PATIENCE_S,
) -> Iterator[ScanResult]:
    """Judge every file under ``paths`` and store one verdict per file; yields results in scan order as they are
    stored. The programmatic face of ``daemon scan`` (tests, benchmarks), on services given rather than built.

    ``engine`` is one engine, or a source whose engine may change between jobs (``EngineWatcher``);
    ``detector`` is the face detector to use (then one prepare worker uses it: detectors are not shared between
    threads), or None for detectors made per worker; ``judge`` turns a prepared job and its engine outputs into
    the verdict. Raises ``ScanFailed`` when the scan itself breaks, after the verdicts stored until then.
    """
    settings = settings or Settings()
    engines = FixedEngine(engine) if isinstance(engine, LoadedEngine) else engine
    if detector is None:
        detectors = lambda: FaceDetectors(settings.device)  # noqa: E731
    else:
        given = detector if isinstance(detector, FaceDetectors) else FaceDetectors(given=[detector])
        detectors, settings = (lambda: given), settings.model_copy(update={"prepare_workers": 1})
    services = Services(settings, engines, repository, NoSink(), Health(), StreamMetrics(), Lifecycle(), config,
                        detectors, judge, outage_patience_s=outage_patience_s)  # fmt: skip
    yield from scan_results(services, FilesSource(paths))


def scan_results(services: Services, source: FilesSource) -> Iterator[ScanResult]:
    """Run the pipeline loop over ``source`` on a thread of its own, yielding each path's result in scan order.

    The loop runs only a few files ahead of the caller (``ahead``): a caller that stops reading for a while
    holds the scan, and an engine promoted meanwhile judges the files after those few. Closing the iterator early
    stops the loop (a drain: what a stage started is still stored)."""
    lifecycle = services.lifecycle
    done: queue.Queue[Completion] = queue.Queue(maxsize=1)

    def report(completion: Completion) -> None:  # on the loop's thread: waits for the caller to read
        while not lifecycle.hurry.is_set():
            try:
                done.put(completion, timeout=0.1)
                return
            except queue.Full:
                continue

    settings = services.settings
    ahead = settings.model_copy(update={"max_in_flight": min(settings.max_in_flight, ahead_of_reader(settings))})
    quiet = replace(services, settings=ahead, on_completion=report, verdict_log_level="debug")  # the table says it
    loop = PipelineLoop(quiet, source)
    exit_status: list[int] = []
    thread = threading.Thread(target=lambda: exit_status.append(loop.run()), name="scan-loop", daemon=True)
    thread.start()
    in_order, stopped = _InOrder(), False
    try:
        while thread.is_alive() or not done.empty():
            try:
                completion = done.get(timeout=0.1)
            except queue.Empty:
                continue
            for ready in in_order.add(completion):
                yield _result(ready, services.repository)
        stopped = lifecycle.stopping.is_set() and not source.exhausted()
        for left in in_order.rest():  # only after a stop: a path whose verdict was stored out of turn
            yield _result(left, services.repository)
    finally:
        lifecycle.stopping.set()  # nobody reads on: the loop drains without waiting to report
        lifecycle.hurry.set()
        thread.join()
    if stopped:
        raise ScanFailed("stopped by a signal; the files after the last one reported were not judged")
    if exit_status != [0]:
        raise ScanFailed("a pipeline stage crashed (see the log); the files after it were not judged")
    if source.broken is not None:
        raise ScanFailed(f"listing the paths broke ({source.broken}); the files after it were not judged")


def ahead_of_reader(settings: Settings) -> int:
    """Files a scan keeps in flight beyond the one reported: enough to fill the prepare workers, the prepared
    queue and a batch, and no more."""
    return settings.prepare_workers + settings.prefetch + 2


class _InOrder:
    """Completions in the order the source handed their paths out (ticket offsets 0, 1, 2, …)."""

    def __init__(self) -> None:
        self._next = 0
        self._waiting: dict[int, Completion] = {}

    def add(self, completion: Completion) -> list[Completion]:
        self._waiting[completion.ticket.offset] = completion
        ready = []
        while self._next in self._waiting:
            ready.append(self._waiting.pop(self._next))
            self._next += 1
        return ready

    def rest(self) -> list[Completion]:
        rest = [self._waiting[offset] for offset in sorted(self._waiting)]
        self._waiting.clear()
        return rest


def _result(completion: Completion, repository: VerdictRepository) -> ScanResult:
    """The scan's result for one completion; a job judged before is reported with its stored verdict."""
    record = completion.record
    if record is None:  # judged before by this engine: skipped, nothing stored now
        assert completion.verdict_id is not None
        record = repository.get(completion.verdict_id)
    return ScanResult(record, completion.verdict_id, completion.created, _uri_path(record.media_uri),
                      completion.store_error)  # fmt: skip


def _uri_path(uri: str) -> Path | None:
    parts = urlsplit(uri)
    return Path(unquote(parts.path)) if parts.scheme == "file" else None
