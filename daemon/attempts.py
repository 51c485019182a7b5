"""The poison-job guard's durable record: how many deliveries of each Kafka message `daemon run` started.

A hostile upload that OOM-kills the process leaves no exception to catch: Kafka delivers it again to the
next replica, which dies too, and the whole consumer group crash-loops. So a delivery is counted *before*
its media is touched, in one short transaction (an upsert on the message's topic, partition and offset, so
messages without a readable job id are counted too); a message started more than ``poison_max_attempts``
times without its verdict being stored is answered instead of tried again (``daemon.stream.prepare``).

A row matters only until the message's offset is committed. The sweeper deletes rows below the offsets
this daemon committed and, for partitions nobody commits any more, rows a day old, in small batches.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import Engine, and_, delete, or_, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import ColumnElement

from deepsift.daemon.db import translate_outages
from deepsift.daemon.models import JobAttempt
from deepsift.daemon.repository import VerdictRepository

log = structlog.get_logger(__name__)

SWEEP_EVERY_S = 60.0
RETENTION = timedelta(days=1)  # rows of partitions no daemon commits any more (topic deleted, group moved)
SWEEP_BATCH = 1000  # rows per delete statement: short transactions beside the upserts of the prepare workers
SWEEP_MAX_BATCHES = 10  # per sweep; the rest waits for the next one

PartitionKey = tuple[str, int]
_KEY = (JobAttempt.kafka_topic, JobAttempt.kafka_partition, JobAttempt.kafka_offset)
_UPSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


class JobAttempts:
    """Deliveries started per message; database outages surface as ``RetryableError``, like the repository's."""

    def __init__(self, engine: Engine) -> None:
        dialect = engine.dialect.name
        if dialect not in _UPSERTS:
            raise NotImplementedError(f"the attempt upsert is written for SQLite and PostgreSQL, not {dialect}")
        self._engine = engine
        self._insert = _UPSERTS[dialect]

    @classmethod
    def beside(cls, repository: VerdictRepository) -> JobAttempts:
        """On the verdict repository's engine and pool, so the guard opens no connections of its own."""
        return cls(repository.engine)

    def started(self, topic: str, partition: int, offset: int, job_id: str | None) -> int:
        """Count one more delivery of the message as started; how many have started, this one included."""
        now = datetime.now(UTC)
        insert = self._insert(JobAttempt).values(
            kafka_topic=topic, kafka_partition=partition, kafka_offset=offset, job_id=job_id, attempts=1,
            first_started_at=now, last_started_at=now,
        )  # fmt: skip
        upsert = insert.on_conflict_do_update(
            index_elements=list(_KEY),
            set_={"attempts": JobAttempt.attempts + 1, "last_started_at": insert.excluded.last_started_at},
        ).returning(JobAttempt.attempts)
        with translate_outages(), self._engine.begin() as connection:
            return connection.execute(upsert).scalar_one()

    def attempts(self, topic: str, partition: int, offset: int) -> int:
        """Deliveries of the message started so far (0 when none is recorded, or its row was swept)."""
        query = select(JobAttempt.attempts).where(
            JobAttempt.kafka_topic == topic, JobAttempt.kafka_partition == partition, JobAttempt.kafka_offset == offset
        )
        with translate_outages(), self._engine.connect() as connection:
            return connection.scalar(query) or 0

    def forget_below(self, committed: Mapping[PartitionKey, int]) -> int:
        """Delete the rows of messages below each partition's committed offset: they are never delivered again."""
        if not committed:
            return 0
        finished = or_(*(_below(topic, partition, offset) for (topic, partition), offset in committed.items()))
        with translate_outages(), self._engine.begin() as connection:
            return connection.execute(delete(JobAttempt).where(finished)).rowcount

    def forget_older_than(self, cutoff: datetime, batch: int = SWEEP_BATCH) -> int:
        """Delete up to ``batch`` rows last started before ``cutoff``; how many went."""
        oldest = select(*_KEY).where(JobAttempt.last_started_at < cutoff).limit(batch)
        with translate_outages(), self._engine.begin() as connection:
            return connection.execute(delete(JobAttempt).where(tuple_(*_KEY).in_(oldest))).rowcount

    def sweep(self, committed: Mapping[PartitionKey, int], now: datetime | None = None) -> int:
        """One round of clean-up: finished messages, then rows older than ``RETENTION``, batch by batch."""
        removed = self.forget_below(committed)
        cutoff = (now or datetime.now(UTC)) - RETENTION
        for _ in range(SWEEP_MAX_BATCHES):
            removed_now = self.forget_older_than(cutoff)
            removed += removed_now
            if removed_now < SWEEP_BATCH:
                break
        return removed


def _below(topic: str, partition: int, offset: int) -> ColumnElement[bool]:
    return and_(
        JobAttempt.kafka_topic == topic, JobAttempt.kafka_partition == partition, JobAttempt.kafka_offset < offset
    )


def sweep_attempts(
    attempts: JobAttempts,
    committed: Callable[[], Mapping[PartitionKey, int]],
    stop: threading.Event,
    every_s: float = SWEEP_EVERY_S,
) -> None:
    """Thread body: sweep every ``every_s`` until the daemon stops; a failed sweep is retried next time."""
    while not stop.wait(every_s):
        try:
            removed = attempts.sweep(committed())
        except Exception as e:  # housekeeping must never stop the daemon; an outage is the dependency probes' to report
            log.warning("attempts_sweep_failed", error=repr(e))
            continue
        if removed:
            log.debug("attempts_swept", rows=removed)
