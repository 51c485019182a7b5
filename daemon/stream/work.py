"""What flows between the pipeline's stages, as frozen records: delivery → work → judged → completion.

``Envelope`` (source → prepare) is a delivery from a job source: a consumed Kafka message, or a path that
``daemon scan`` judges; ``Work`` (prepare → batching) is a job ready for the engine, or one that already
earned its verdict; ``Judged`` (batching → persist) carries the verdict to store; ``Completion`` (persist →
main loop) says the verdict is in SQL, so the source may acknowledge the delivery (commit its offset).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from deepsift.daemon.paths import ScanEntry
from deepsift.daemon.pipeline import JudgeConfig, PreparedMedia
from deepsift.daemon.records import VerdictRecord
from deepsift.daemon.stream.offsets import Ticket

STOP = object()  # put on a stage's queue to end it
_POLL_S = 0.1


@dataclass(frozen=True)
class Envelope:
    """A delivery, untouched: a message's bytes (dead letters carry them exactly), or the path of a scan.

    ``timestamp_ms`` is when the job was submitted: the Kafka record's timestamp (the producer's send time, or the
    broker's append time on a topic with ``LogAppendTime``), or the start of the scan that handed the path out."""

    ticket: Ticket
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None
    received: float  # time.monotonic() when taken from the source
    entry: ScanEntry | None = None  # a path to judge (the files source); None for a message
    taken_at: float = field(default_factory=time.time)  # the wall-clock time when taken from the source

    @property
    def submitted_at(self) -> datetime | None:
        """``timestamp_ms`` as a UTC time; None when the delivery has none, or one no date can hold (a producer sets
        any 64-bit value: past year 9999 it is not a time, and it must not stop the persist stage)."""
        if self.timestamp_ms is None or self.timestamp_ms <= 0:
            return None
        try:
            return datetime.fromtimestamp(self.timestamp_ms / 1000.0, UTC)
        except (OverflowError, OSError, ValueError):
            return None


@dataclass(frozen=True)
class Work:
    """A job through prepare: pixels for the engine, an outcome already known, or ``stored_id`` (judged before)."""

    envelope: Envelope
    job_id: str
    config: JudgeConfig
    prepared: PreparedMedia | None = None
    stored_id: int | None = None

    @property
    def frames(self) -> int:
        pixels = self.prepared.pixels if self.prepared is not None else None
        return 0 if pixels is None else len(pixels)


@dataclass(frozen=True)
class Judged:
    """The verdict to store for a job; ``record`` is None when this engine judged the job before. ``shadows``:
    the shadow engines' verdicts of the job, stored in the same transaction (``pipeline.shadow``)."""

    work: Work
    record: VerdictRecord | None
    shadows: tuple[VerdictRecord, ...] = ()


@dataclass(frozen=True)
class Completion:
    """A job's verdict is committed in SQL (and its dead letter and event produced), or cannot be stored.

    ``record`` is the verdict stored (a ``store_failed`` one in place of a refused verdict), or the verdict as
    judged when nothing could be stored (``verdict_id`` None, ``store_error`` says why); None for a job judged
    before (``skipped``: ``verdict_id`` names the stored verdict)."""

    ticket: Ticket
    job_id: str
    outcome: str  # ok | abstained | error | skipped
    code: str | None
    timestamp_ms: int | None  # when the job was submitted (Envelope.timestamp_ms), for end-to-end latency
    verdict_id: int | None = None
    record: VerdictRecord | None = None
    created: bool = False  # this delivery stored the verdict (not an earlier one)
    store_error: str | None = None  # why the judged verdict is not the one stored


def put(q: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Block until ``q`` has room (back-pressure), unless the daemon stops first; False then."""
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def take(q: queue.Queue, stop: threading.Event, timeout: float | None = None) -> object | None:
    """The next item, ``STOP`` when the daemon stops, None when ``timeout`` passes first."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not stop.is_set():
        step = _POLL_S if deadline is None else min(_POLL_S, deadline - time.monotonic())
        try:
            return q.get(timeout=step) if step > 0 else q.get_nowait()
        except queue.Empty:
            if step <= 0:
                return None
    return STOP
