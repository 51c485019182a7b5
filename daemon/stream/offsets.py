"""Which offsets may be committed: per partition, up to the lowest offset whose verdict is not yet stored.

Jobs finish out of order (several prepare workers, engine batches across partitions), while a Kafka
commit means "everything below this offset is done". So each partition keeps the offsets in flight and
commits only up to the lowest of them; a job that finishes early waits for its predecessors. Each
assignment of a partition gets a new epoch, so work handed out under an old assignment is recognised
(and dropped) after a rebalance instead of being committed by a consumer that no longer owns it.

Pure bookkeeping, no Kafka types: the consumer edge converts ``(topic, partition)`` keys.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

PartitionKey = tuple[str, int]


@dataclass(frozen=True)
class Ticket:
    """One consumed message: where it came from, and under which assignment (epoch) it was taken."""

    topic: str
    partition: int
    offset: int
    epoch: int

    @property
    def key(self) -> PartitionKey:
        return (self.topic, self.partition)


@dataclass
class PartitionProgress:
    """Offsets taken but not finished, the next offset after the highest taken, the last commit."""

    pending: set[int] = field(default_factory=set)
    next_offset: int | None = None
    committed: int | None = None

    def committable(self) -> int | None:
        """The offset a commit may name: the lowest pending one, else one past the highest taken."""
        if self.pending:
            return min(self.pending)
        return self.next_offset

    def advanced(self) -> bool:
        """Whether a commit would move forward (it never moves back, e.g. after an offset reset)."""
        offset = self.committable()
        return offset is not None and (self.committed is None or offset > self.committed)


class OffsetLedger:
    """Thread-safe: the main loop takes and commits, the rebalance listener assigns and revokes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._partitions: dict[PartitionKey, PartitionProgress] = {}
        self._epochs: dict[PartitionKey, int] = {}

    def assign(self, keys: set[PartitionKey]) -> set[PartitionKey]:
        """Make ``keys`` the whole assignment; returns the partitions given up.

        A partition kept across a rebalance keeps its progress and epoch: the client keeps its fetch
        position, so work in flight for it is still ours and finishes normally (were the position reset
        instead, the re-delivered messages would only be judged again and skipped). Partitions given up
        get a new epoch, so their work in flight is recognised as stale and dropped.
        """
        with self._lock:
            dropped = set(self._partitions) - keys
            for key in dropped:
                del self._partitions[key]
                self._epochs[key] = self._epochs.get(key, 0) + 1
            for key in keys - set(self._partitions):
                self._epochs[key] = self._epochs.get(key, 0) + 1
                self._partitions[key] = PartitionProgress()
            return dropped

    def revoking(self, keys: set[PartitionKey]) -> dict[PartitionKey, int]:
        """What may be committed for partitions about to be revoked; they stay tracked until ``assign``
        says whether they come back (an eager rebalance revokes everything, then assigns)."""
        with self._lock:
            return {
                key: progress.committable()
                for key in keys
                if (progress := self._partitions.get(key)) is not None and progress.advanced()
            }

    def take(self, topic: str, partition: int, offset: int) -> Ticket | None:
        """A ticket for a consumed message, or None if its partition is not assigned (a stale fetch)."""
        key = (topic, partition)
        with self._lock:
            progress = self._partitions.get(key)
            if progress is None:
                return None
            progress.pending.add(offset)
            progress.next_offset = max(progress.next_offset or 0, offset + 1)
            return Ticket(topic, partition, offset, self._epochs[key])

    def finish(self, ticket: Ticket) -> bool:
        """Mark the ticket's verdict as stored; False when its assignment has ended meanwhile."""
        with self._lock:
            if not self._current(ticket):
                return False
            self._partitions[ticket.key].pending.discard(ticket.offset)
            return True

    def is_current(self, ticket: Ticket) -> bool:
        """False once the ticket's partition was revoked: its work belongs to another consumer now."""
        with self._lock:
            return self._current(ticket)

    def _current(self, ticket: Ticket) -> bool:
        return self._epochs.get(ticket.key) == ticket.epoch and ticket.key in self._partitions

    def ready(self) -> dict[PartitionKey, int]:
        """Partitions whose committable offset moved past the last commit."""
        with self._lock:
            found = {}
            for key, progress in self._partitions.items():
                if progress.advanced():
                    found[key] = progress.committable()
            return found

    def committed(self, offsets: dict[PartitionKey, int]) -> None:
        """Record a successful commit."""
        with self._lock:
            for key, offset in offsets.items():
                if key in self._partitions:
                    self._partitions[key].committed = offset

    def last_committed(self, key: PartitionKey) -> int | None:
        with self._lock:
            progress = self._partitions.get(key)
            return None if progress is None else progress.committed

    def in_flight(self) -> int:
        """Messages taken and not finished, over all assigned partitions."""
        with self._lock:
            return sum(len(p.pending) for p in self._partitions.values())

    def assigned(self) -> set[PartitionKey]:
        with self._lock:
            return set(self._partitions)
