"""Where a stored verdict is announced beyond SQL: the ``ResultSink`` interface of the persist stage.

``daemon run`` announces through Kafka (``daemon.broker.sink.KafkaSink``: dead letters, result events);
``daemon scan`` prints its table and announces nothing (``NoSink``).
"""

from __future__ import annotations

from typing import Protocol

from deepsift.daemon.records import VerdictRecord
from deepsift.daemon.stream.work import Envelope


class ResultSink(Protocol):
    """Called by the persist stage; each call waits out an outage of its own dependency (raising ``Abandoned``
    when the daemon stops meanwhile) and never raises for one record it cannot deliver."""

    @property
    def wants_events(self) -> bool:
        """Whether ``publish`` does anything (a job judged before then has its stored verdict read back)."""
        ...

    def dead_letter(self, envelope: Envelope, record: VerdictRecord) -> None:
        """An error verdict's delivery and reason, before the verdict is stored."""
        ...

    def publish(self, record: VerdictRecord, verdict_id: int) -> None:
        """The stored verdict's result event."""
        ...

    def close(self) -> None: ...


class NoSink:
    """Announces nothing: the verdicts in SQL (and ``daemon scan``'s table) are the whole result."""

    wants_events = False

    def dead_letter(self, envelope: Envelope, record: VerdictRecord) -> None:
        return

    def publish(self, record: VerdictRecord, verdict_id: int) -> None:
        return

    def close(self) -> None:
        return
