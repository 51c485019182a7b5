"""Where jobs come from: the ``JobSource`` interface the pipeline loop drives, and the registry of sources.

A source hands out deliveries (``Envelope``: a Kafka message's bytes, or a path to judge) with a ``Ticket``
saying where each came from, and is told when a delivery's verdict is stored (``acknowledge``). What an
acknowledgement does is the source's business: Kafka commits offsets once every job below them is stored;
the files source of ``daemon scan`` does nothing. The loop pauses a source while the pipeline is full and
resumes it once it has drained (back-pressure), and keeps turning until the source is ``exhausted`` (files)
or the process is told to stop (Kafka never runs out).

Everything a source needs from Kafka stays in ``daemon.broker``: the loop and the stages see tickets and
envelopes, never client types.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from deepsift.daemon.stream.offsets import PartitionKey, Ticket
from deepsift.daemon.stream.work import Completion, Envelope
from deepsift.engines.registry import Registry

if TYPE_CHECKING:
    from deepsift.daemon.settings import Settings
    from deepsift.daemon.stream.health import Health
    from deepsift.daemon.stream.metrics import StreamMetrics
    from deepsift.daemon.stream.retry import DependencyWatch


class JobSource(Protocol):
    """What the pipeline loop (``daemon.stream.runner``) takes jobs from; used by the loop's thread only,
    except ``owns``, which the stages call."""

    name: str
    redelivers: bool  # a delivery that is not acknowledged comes again (Kafka): deliveries are counted (poison)

    def open(self, stop: threading.Event, collect: Callable[[], None]) -> bool:
        """Connect (waiting while the source is down); False when ``stop`` was set meanwhile. ``collect`` hands
        finished jobs to the source; it calls it before it gives work up (a Kafka rebalance)."""
        ...

    def take(self, room: int) -> list[Envelope]:
        """Up to ``room`` new deliveries; may wait briefly (a poll), may return none."""
        ...

    def keep_alive(self) -> None:
        """Wait briefly without taking anything (a drain): a Kafka member polls to stay in its group."""
        ...

    def acknowledge(self, done: Completion) -> bool:
        """The job's verdict is stored; False when the delivery is no longer this source's (revoked)."""
        ...

    def commit(self, force: bool = False) -> None:
        """Make acknowledgements durable (offset commits); ``force`` now rather than at the next interval."""
        ...

    def owns(self, ticket: Ticket) -> bool:
        """Whether work for this delivery is still wanted (False after its Kafka partition was revoked)."""
        ...

    def in_flight(self) -> int:
        """Deliveries taken and not yet acknowledged, among those the source still owns."""
        ...

    def pause(self) -> None:
        """Stop delivering (the pipeline is full); ``take`` keeps the connection alive meanwhile."""
        ...

    def resume(self) -> None: ...

    def paused(self) -> bool: ...

    def exhausted(self) -> bool:
        """No delivery will ever come again (every file handed out); never for a stream."""
        ...

    def positions(self) -> dict[PartitionKey, int]:
        """Per partition, the position below which nothing is delivered again (for the poison-count sweep)."""
        ...

    def observe(self) -> None:
        """Refresh the source's gauges (partitions, lag) and the service status line."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class SourceRequest:
    """What a source is made from: the settings, the paths of a scan, and where it reports."""

    settings: Settings
    health: Health
    metrics: StreamMetrics
    watch: DependencyWatch
    paths: Sequence[Path] = field(default=())


SourceFactory = Callable[[SourceRequest], JobSource]

SOURCES: Registry[SourceFactory] = Registry("job source")


@SOURCES.register("files")
def _files(request: SourceRequest) -> JobSource:
    from deepsift.daemon.sources.files import FilesSource

    return FilesSource(request.paths)


@SOURCES.register("kafka")
def _kafka(request: SourceRequest) -> JobSource:
    from deepsift.daemon.broker.source import KafkaSource  # kafka-python is imported by this source alone

    return KafkaSource(request.settings, request.health, request.metrics, request.watch)
