"""The ``files`` job source of ``daemon scan``: every named file, and every media file inside named folders.

Each path is one delivery, handed out in order as the loop has room; nothing is opened while walking (a path
that cannot be judged is an entry with its problem), and the file is read once, for its hash, by the prepare
stage (``scan_job``). An acknowledgement does nothing: a scan that stops is simply run again, and its job ids
(the path and content hashed) make that idempotent. A walk that breaks (a bug, not one path) ends the source
``broken``: what was handed out is still judged, then ``daemon scan`` fails.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import structlog

from deepsift.daemon.paths import PathProblem, ScanEntry, not_regular, path_problem
from deepsift.daemon.pipeline import MediaJob
from deepsift.daemon.stream.offsets import PartitionKey, Ticket
from deepsift.daemon.stream.work import Completion, Envelope

log = structlog.get_logger(__name__)

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".3gp"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
MEDIA_SUFFIXES = VIDEO_SUFFIXES | IMAGE_SUFFIXES
TOPIC = "files"  # the tickets' topic: one "partition", the offset is the path's place in the scan
IDLE_S = 0.02  # how long ``take`` waits when it has nothing to hand out (the loop would spin otherwise)


class FilesSource:
    """Paths as deliveries, in scan order; acknowledgements are counted, nothing more."""

    name = "files"
    redelivers = False

    def __init__(self, paths: Sequence[Path] = (), entries: Iterable[ScanEntry] | None = None) -> None:
        self._entries = iter(scan_entries(paths) if entries is None else entries)
        self._handed_out = 0
        self.started_ms = int(time.time() * 1000)  # the scan's start: when each of its jobs counts as submitted
        self._open: set[int] = set()
        self._paused = False
        self._done = False
        self.broken: str | None = None  # why the walk ended early, when it did

    def open(self, stop: threading.Event, collect: Callable[[], None]) -> bool:
        return not stop.is_set()

    def take(self, room: int) -> list[Envelope]:
        taken = [] if self._paused else self._next(room)
        if not taken:
            time.sleep(IDLE_S)
        return taken

    def _next(self, room: int) -> list[Envelope]:
        taken: list[Envelope] = []
        while len(taken) < room and not self._done:
            try:
                entry = next(self._entries)
            except StopIteration:
                self._done = True
                break
            except Exception as e:  # a bug in the walk: the rest cannot be listed, so the scan must fail
                log.exception("scan_walk_failed", after=self._handed_out)
                self._done, self.broken = True, repr(e)
                break
            ticket = Ticket(TOPIC, 0, self._handed_out, 0)
            self._handed_out += 1
            self._open.add(ticket.offset)
            taken.append(Envelope(ticket, None, None, self.started_ms, time.monotonic(), entry=entry))
        return taken

    def keep_alive(self) -> None:
        time.sleep(IDLE_S)

    def acknowledge(self, done: Completion) -> bool:
        self._open.discard(done.ticket.offset)
        return True

    def commit(self, force: bool = False) -> None:
        return

    def owns(self, ticket: Ticket) -> bool:
        return True

    def in_flight(self) -> int:
        return len(self._open)

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    def paused(self) -> bool:
        return self._paused

    def exhausted(self) -> bool:
        return self._done

    def positions(self) -> dict[PartitionKey, int]:
        return {}

    def observe(self) -> None:
        return

    def close(self) -> None:
        return


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
            return path_job(resolved, content), None
    else:
        problem = entry.problem
    # A path that cannot be read keeps the name it was given: a broken link is the problem, not its target.
    return path_job(named, None), problem


def path_job(path: Path, content: str | None) -> MediaJob:
    """The job of a scanned path: its id hashes the absolute path and the content's sha256."""
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
