"""A versioned on-disk engine store: ``ROOT/NAME/vNNNN/{artifact, manifest.json}`` and ``ROOT/NAME/current``.

New versions are assembled in a temporary folder and renamed into place, so a half-written engine is
never visible; ``current`` is a symlink switched with an atomic rename, so a daemon reading it sees the
old engine or the new one, never neither.

Every promotion (and rollback) appends one JSON line to ``ROOT/NAME/promotions.jsonl``. The link swap and
the append happen under an exclusive ``flock`` on that file, so concurrent promoters (threads or processes on
one host) are serialised and the log's order is the order in which ``current`` actually changed.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import getpass
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from deepsift.engines.errors import EngineError
from deepsift.engines.manifest import EngineManifest

_VERSION_DIR = re.compile(r"^v(\d{4,})$")
CURRENT = "current"
HISTORY_FILE = "promotions.jsonl"
ROLLBACK = "rollback"
Action = Literal["promote", "rollback"]


@dataclass(frozen=True)
class Promotion:
    """One line of ``promotions.jsonl``: ``current`` moved from ``previous_version`` to ``version``."""

    version: int
    previous_version: int | None
    time: str  # ISO 8601, UTC
    user: str | None
    reason: str | None
    action: Action = "promote"


def _current_user() -> str | None:
    try:
        return getpass.getuser()  # LOGNAME, USER, LNAME, USERNAME, then the password database
    except (OSError, KeyError):  # a container user with no name
        return None


def _parse_history_line(line: str) -> Promotion | None:
    try:
        data = json.loads(line)
        return Promotion(**{f.name: data[f.name] for f in fields(Promotion) if f.name in data})
    except (ValueError, TypeError, AttributeError):
        return None


class EngineStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def versions(self, name: str) -> list[int]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        found = (_VERSION_DIR.match(p.name) for p in folder.iterdir() if p.is_dir() and not p.is_symlink())
        return sorted(int(m.group(1)) for m in found if m)

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []

    def known_names(self, wanted: str) -> str:
        """For an error about ``wanted``: the engines this store holds, the closest first if one is close."""
        names = self.names()
        if not names:
            return "the store holds no engine: build one (see README)"
        close = difflib.get_close_matches(wanted, names, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"{hint}engines there: {', '.join(names)}"

    def path(self, name: str, version: int) -> Path:
        return self.root / name / f"v{version:04d}"

    def add(self, manifest: EngineManifest, artifact: Path) -> EngineManifest:
        """Store ``artifact`` as the next version of ``manifest.name``; returns the manifest as stored."""
        folder = self.root / manifest.name
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder))
        try:
            staging.chmod(folder.stat().st_mode & 0o777)  # mkdtemp's 0700 would hide the engine from the daemon's user
            shutil.copyfile(artifact, staging / manifest.artifact)
            while True:
                version = (self.versions(manifest.name) or [0])[-1] + 1
                stored = manifest.model_copy(update={"version": version})
                stored.write(staging)
                try:
                    staging.rename(self.path(manifest.name, version))  # atomic; fails if another writer won
                    return stored
                except OSError:
                    if not self.path(manifest.name, version).exists():
                        raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def promote(self, name: str, version: int, reason: str | None = None) -> None:
        """Point ``NAME/current`` at ``version`` with one atomic rename, and record it in the promotion history."""
        self._require(name, version)
        with self._history_locked(name) as log:
            self._switch(name, version, log, "promote", reason)

    def rollback(self, name: str) -> int:
        """Point ``current`` back at the version that was current before the present one; returns that version.

        The history is replayed as a stack (a promotion pushes, a rollback pops back to its target), so repeated
        rollbacks keep walking back instead of toggling between two versions. Versions deleted from the store
        since are skipped. Raises EngineError when there is no current version or nothing earlier to go back to.
        """
        with self._history_locked(name) as log:
            current = self.current_version(name)
            if current is None:
                raise EngineError(f"no current engine named {name!r} in {self.root}; nothing to roll back")
            target = self._rollback_target(name, current)
            if target is None:
                raise EngineError(
                    f"engine {name} v{current} has no earlier promoted version still in {self.root} to roll back to"
                )
            self._switch(name, target, log, ROLLBACK, ROLLBACK)
            return target

    def history(self, name: str) -> list[Promotion]:
        """The promotions of ``name``, oldest first; lines that cannot be parsed (a torn write) are skipped."""
        path = self.root / name / HISTORY_FILE
        if not path.is_file():
            return []
        parsed = (_parse_history_line(line) for line in path.read_text().splitlines() if line.strip())
        return [p for p in parsed if p is not None]

    def current_version(self, name: str) -> int | None:
        link = self.root / name / CURRENT
        if not link.is_symlink():
            return None
        match = _VERSION_DIR.match(os.readlink(link))
        return int(match.group(1)) if match else None

    def resolve(self, name: str, version: int | None = None) -> Path:
        """The folder of ``version``, or of the current version when ``version`` is None."""
        version = self.current_version(name) if version is None else version
        if version is None:
            raise EngineError(f"no current engine named {name!r} in {self.root}; {self.known_names(name)}")
        path = self.path(name, version)
        if not path.is_dir():
            raise EngineError(f"engine {name} v{version} is missing from {self.root}")
        return path

    def _require(self, name: str, version: int) -> None:
        if not self.path(name, version).is_dir():
            raise EngineError(f"engine {name} has no version {version} in {self.root}")

    @contextlib.contextmanager
    def _history_locked(self, name: str) -> Iterator[int]:
        """The history file, opened for appending and held under an exclusive flock until the block ends."""
        folder = self.root / name
        if not folder.is_dir():
            raise EngineError(f"no engine named {name!r} in {self.root}")
        fd = os.open(folder / HISTORY_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # releases the lock

    def _switch(self, name: str, version: int, log: int, action: Action, reason: str | None) -> None:
        """Swap ``current`` to ``version`` and append the record; the caller holds the history lock."""
        self._require(name, version)
        previous = self.current_version(name)
        link = self.root / name / CURRENT
        tmp = link.with_name(f".{CURRENT}-{os.getpid()}-{threading.get_ident()}")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(self.path(name, version).name)
        os.replace(tmp, link)
        record = Promotion(version, previous, datetime.now(UTC).isoformat(), _current_user(), reason, action)
        os.write(log, (json.dumps(asdict(record)) + "\n").encode())  # one O_APPEND write: lines never interleave

    def _rollback_target(self, name: str, current: int) -> int | None:
        history = self.history(name)
        # The version current before the log began (a store promoted before it kept history) is the bottom.
        stack: list[int] = [history[0].previous_version] if history and history[0].previous_version else []
        for entry in history:
            if entry.action == ROLLBACK and entry.version in stack:
                del stack[len(stack) - stack[::-1].index(entry.version) :]  # pop back to the target
            elif not stack or stack[-1] != entry.version:
                stack.append(entry.version)
        if current in stack:  # start below the present version's latest push
            stack = stack[: len(stack) - 1 - stack[::-1].index(current)]
        present = set(self.versions(name))
        return next((v for v in reversed(stack) if v != current and v in present), None)
