"""What is wrong with a local path that cannot be judged as media, as an error verdict's code and detail.

``daemon scan`` (its files) and ``daemon run`` (``file://`` jobs) classify a path the same way, from the
``OSError`` the operating system raised or from the file's type, never by opening it (opening a FIFO blocks).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

# Error codes of paths that could not be read as files (as opposed to media that could not be judged).
PATH_CODES = ("not_found", "not_regular_file", "symlink_loop", "unreadable")
_ERRNO_CODES = {
    errno.ELOOP: "symlink_loop",
    errno.ENOENT: "not_found",  # a missing path, or a symlink to one
    errno.ENOTDIR: "not_found",  # a path through a file
    errno.EACCES: "unreadable",
    errno.EPERM: "unreadable",
}  # any other OSError (EIO, ENXIO, ...) is "unreadable" too
_NOT_REGULAR = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a folder"),
)


@dataclass(frozen=True)
class PathProblem:
    """Why a path cannot be judged as media; it becomes the path's error verdict."""

    code: str
    detail: str


@dataclass(frozen=True)
class ScanEntry:
    """A path that gets one verdict: a regular file to judge, or what is wrong with the path."""

    path: Path
    problem: PathProblem | None = None


def path_problem(error: OSError, path: Path, doing: str = "read") -> PathProblem:
    """The error verdict's code and detail for an ``OSError`` met on ``path`` (EACCES, EPERM, EIO: unreadable)."""
    code = _ERRNO_CODES.get(error.errno or 0, "unreadable")
    if code == "not_found" and os.path.islink(path):
        with contextlib.suppress(OSError):
            return PathProblem(code, f"{path} is a dangling symbolic link to {os.readlink(path)}")
    return PathProblem(code, f"cannot {doing} {path}: {error.strerror or error}")


def not_regular(path: Path, mode: int) -> PathProblem:
    kind = next((name for test, name in _NOT_REGULAR if test(mode)), "not a regular file")
    return PathProblem("not_regular_file", f"{path} is {kind}, not a media file")
