"""Retry with backoff for dependencies that are down for now (database, broker): forever, never skipping.

A job whose verdict cannot be stored stays in flight, so its offset is never committed; the consumer
pauses once too much is in flight. Only a daemon that is stopping gives up (``Abandoned``), leaving
the work uncommitted for re-delivery — or a caller with a patience (``give_up_after_s``: ``daemon scan``,
which has no re-delivery to leave the work to), which then gets the dependency's error.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, TypeVar

import structlog

from deepsift.engines.errors import RetryableError

log = structlog.get_logger(__name__)

T = TypeVar("T")


class Abandoned(Exception):
    """The daemon is stopping; the work stays uncommitted and Kafka delivers it again."""


class DependencyWatch(Protocol):
    """Told about each outage and recovery (health readiness, metrics)."""

    def dependency_failed(self, name: str, error: str) -> None: ...

    def dependency_ok(self, name: str) -> None: ...


@dataclass(frozen=True)
class Backoff:
    """Exponential delays with full jitter, so replicas that failed together do not retry together."""

    initial_s: float = 0.2
    max_s: float = 15.0
    factor: float = 2.0

    def delays(self) -> Iterator[float]:
        ceiling = self.initial_s
        while True:
            yield random.uniform(ceiling / 2, ceiling)
            ceiling = min(self.max_s, ceiling * self.factor)


def retry_forever(
    operation: Callable[[], T],
    *,
    dependency: str,
    stop: threading.Event,
    watch: DependencyWatch,
    backoff: Backoff = Backoff(),
    give_up_after_s: float | None = None,
    **log_context: object,
) -> T:
    """Run ``operation`` until it succeeds; ``RetryableError`` backs off, anything else propagates. With
    ``give_up_after_s``, the ``RetryableError`` of the first attempt after that long propagates too."""
    delays = backoff.delays()
    attempt = 0
    deadline = None if give_up_after_s is None else time.monotonic() + give_up_after_s
    while True:
        attempt += 1
        try:
            result = operation()
        except RetryableError as e:
            watch.dependency_failed(dependency, str(e))
            if deadline is not None and time.monotonic() >= deadline:
                raise
            delay = next(delays)
            log.warning("dependency_unavailable", dependency=dependency, error=str(e), attempt=attempt,
                        retry_in_s=round(delay, 2), **log_context)  # fmt: skip
            if stop.wait(delay):
                raise Abandoned(f"{dependency} still unavailable while stopping") from e
            continue
        if attempt > 1:
            log.info("dependency_recovered", dependency=dependency, attempts=attempt, **log_context)
        watch.dependency_ok(dependency)
        return result
