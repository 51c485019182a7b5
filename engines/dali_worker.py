"""The DALI decode worker: one spawned, long-lived process that decodes frames, contained so that a crash or a
hang in DALI costs one video (its PyAV fallback), never the daemon. ``engines.dali`` routes videos to it.

Frames come back through a host shared-memory segment the parent owns (see ``engines.dali`` for why not CUDA
IPC); a worker that dies, hangs past ``timeout_s`` or cannot start is a ``DecoderFailure`` with its reason.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any, Protocol

import numpy as np

from deepsift.engines.errors import DeepsiftError

log = logging.getLogger(__name__)


class DecoderFailure(DeepsiftError):
    """The DALI worker could not decode one video; ``reason`` becomes the video's fallback reason."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# --- can DALI run here -------------------------------------------------------------------------------


class FrameDecoder(Protocol):
    def __call__(self, encoded: np.ndarray, frames: Sequence[int], out: np.ndarray) -> None:
        """Decode ``frames`` (indices) of the encoded video (uint8, 1-D) into ``out`` (F×H×W×3 uint8 RGB)."""
        ...


@dataclass(frozen=True)
class _Request:
    seq: int
    segment: str  # shared memory: the encoded bytes at 0, the frames at ``frames_offset``
    encoded_bytes: int
    frames: tuple[int, ...]
    shape: tuple[int, int, int, int]
    frames_offset: int


def _worker_main(conn: Connection, make_decoder: Callable[[], FrameDecoder]) -> None:
    """The worker's loop: build the decoder, say ready, then decode one request at a time until told to stop."""
    try:
        decode = make_decoder()
    except BaseException as e:
        conn.send(("failed", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", os.getpid()))
    segment: SharedMemory | None = None
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if request is None:
            return
        try:
            if segment is None or segment.name != request.segment:
                _close_segment(segment)
                segment = SharedMemory(name=request.segment)
            _decode_request(decode, segment, request)
            conn.send((request.seq, "ok", ""))
        except Exception as e:
            conn.send((request.seq, "error", f"{type(e).__name__}: {e}"))


def _decode_request(decode: FrameDecoder, segment: SharedMemory, request: _Request) -> None:
    encoded = np.ndarray((request.encoded_bytes,), np.uint8, buffer=segment.buf)
    out = np.ndarray(request.shape, np.uint8, buffer=segment.buf, offset=request.frames_offset)
    try:
        decode(encoded, request.frames, out)
    finally:
        del encoded, out  # views must go before the segment can close


def _close_segment(segment: SharedMemory | None) -> None:
    if segment is None:
        return
    with contextlib.suppress(BufferError):  # a view is still alive somewhere; the mapping goes with the process
        segment.close()


SHM_DIR = "/dev/shm"
SHM_HEADROOM_BYTES = 64 << 20  # left free for everything else in /dev/shm


def shm_free_bytes() -> int | None:
    """Free bytes in /dev/shm, where POSIX shared memory lives on Linux; None where it cannot be told."""
    try:
        stats = os.statvfs(SHM_DIR)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


class IsolatedDecoder:
    """A long-lived spawned worker that decodes frames with ``make_decoder()``; it is restarted after it dies.

    ``decode`` raises ``DecoderFailure`` with reason ``dali_crashed``, ``dali_timeout``, ``dali_error`` or
    ``dali_start_failed`` or ``shm_too_small``; it never lets a worker failure escape as anything else. Calls are
    serialised.
    """

    def __init__(
        self,
        make_decoder: Callable[[], FrameDecoder],
        timeout_s: float = 30.0,
        start_timeout_s: float = 120.0,
        start_backoff_s: float = 60.0,
    ) -> None:
        self.make_decoder = make_decoder
        self.timeout_s = timeout_s
        self.start_timeout_s = start_timeout_s
        self.start_backoff_s = start_backoff_s  # after a failed start, videos go straight to PyAV this long
        self.starts = 0
        self._no_start_until = 0.0
        self._lock = threading.Lock()
        self._process: Any = None
        self._conn: Connection | None = None
        self._segment: SharedMemory | None = None
        self._seq = 0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None and self._process.is_alive() else None

    def start(self) -> None:
        """Start the worker now (else the first ``decode`` does), raising ``DecoderFailure`` if it cannot."""
        with self._lock:
            self._ensure_started()

    def decode(
        self, encoded: bytes, frames: Sequence[int], shape: tuple[int, int, int, int], take: Callable[[np.ndarray], Any]
    ) -> Any:
        """``take(frames_array)`` of the decoded F×H×W×3 frames; the array is valid only during ``take``."""
        with self._lock:
            self._ensure_started()
            frames_offset = -(-len(encoded) // 64) * 64
            segment = self._segment_of(frames_offset + int(np.prod(shape)))
            segment.buf[: len(encoded)] = encoded
            self._seq += 1
            self._send(_Request(self._seq, segment.name, len(encoded), tuple(frames), shape, frames_offset))
            self._await(self._seq)
            view = np.ndarray(shape, np.uint8, buffer=segment.buf, offset=frames_offset)
            try:
                return take(view)
            finally:
                del view

    def close(self) -> None:
        """Stop the worker and free the shared memory."""
        with self._lock:
            self._stop(graceful=True)
            if self._segment is not None:
                _close_segment(self._segment)
                self._segment.unlink()
                self._segment = None

    def _ensure_started(self) -> None:
        if self._process is not None and self._process.is_alive():
            return
        self._stop()
        if time.monotonic() < self._no_start_until:
            raise DecoderFailure("dali_start_failed", "the worker failed to start recently; not retrying yet")
        try:
            self._spawn()
        except DecoderFailure:
            self._no_start_until = time.monotonic() + self.start_backoff_s
            raise

    def _spawn(self) -> None:
        context = multiprocessing.get_context("spawn")  # never fork: CUDA and DALI's threads do not survive it
        parent, child = context.Pipe()
        process = context.Process(target=_worker_main, args=(child, self.make_decoder), daemon=True)
        process.name = "deepsift-decode-worker"
        process.start()
        child.close()  # only the worker holds this end: its death is an EOF here
        self._process, self._conn = process, parent
        self.starts += 1
        message = self._receive(self.start_timeout_s, "dali_start_failed")
        if message[0] != "ready":
            self._stop()
            raise DecoderFailure("dali_start_failed", str(message[1]))
        log.info("decode worker %s started (start %d)", process.pid, self.starts)

    def _segment_of(self, size: int) -> SharedMemory:
        """The shared segment, grown (replaced) when a video needs more room than it has.

        The room is reserved up front (``posix_fallocate``), so a full ``/dev/shm`` is a ``shm_too_small``
        failure (this video goes to PyAV) rather than a SIGBUS in the daemon when the bytes are written."""
        if self._segment is None or self._segment.size < size:
            if self._segment is not None:
                _close_segment(self._segment)
                self._segment.unlink()
                self._segment = None
            free = shm_free_bytes()
            if free is not None and size + SHM_HEADROOM_BYTES > free:
                raise DecoderFailure("shm_too_small", f"needs {size} bytes of shared memory, {free} free")
            segment = SharedMemory(create=True, size=max(size, 1 << 20))
            try:
                os.posix_fallocate(segment._fd, 0, segment.size)  # type: ignore[attr-defined]
            except OSError as e:
                _close_segment(segment)
                segment.unlink()
                raise DecoderFailure("shm_too_small", f"cannot reserve {segment.size} bytes: {e}") from e
            self._segment = segment
        return self._segment

    def _send(self, request: _Request) -> None:
        try:
            self._conn.send(request)  # type: ignore[union-attr]
        except OSError as e:  # the worker died between videos
            self._stop()
            raise DecoderFailure("dali_crashed", f"the worker's pipe is closed: {e}") from e

    def _await(self, seq: int) -> None:
        while True:
            message = self._receive(self.timeout_s, "dali_timeout")
            if message[0] != seq:  # a reply to a request that was given up on; cannot happen after a kill
                continue
            if message[1] == "error":
                raise DecoderFailure("dali_error", message[2])
            return

    def _receive(self, timeout_s: float, on_timeout: str) -> tuple[Any, ...]:
        """The worker's next message; a dead worker is ``dali_crashed`` (or ``dali_start_failed``)."""
        starting = on_timeout == "dali_start_failed"
        conn = self._conn
        if not conn.poll(timeout_s):  # type: ignore[union-attr]
            pid = self._process.pid
            self._stop()
            log.warning("decode worker %s killed after %.1f s without an answer", pid, timeout_s)
            raise DecoderFailure(on_timeout, f"no answer within {timeout_s:g} s")
        try:
            return conn.recv()  # type: ignore[union-attr]
        except (EOFError, OSError) as e:
            exitcode = self._stop()
            log.warning("decode worker died with exit code %s", exitcode)
            raise DecoderFailure("dali_start_failed" if starting else "dali_crashed", f"exit code {exitcode}") from e

    def _stop(self, graceful: bool = False) -> int | None:
        """Stop the worker (kill it unless ``graceful``) and return its exit code."""
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if conn is not None:
            if graceful:
                with contextlib.suppress(OSError):  # already gone
                    conn.send(None)
            conn.close()
        if process is None:
            return None
        if graceful:
            process.join(5.0)
        if process.is_alive():
            process.kill()
        process.join(5.0)
        return process.exitcode


# --- DALI inside the worker -------------------------------------------------------------------------
