"""Retries while a dependency is down: forever, reported to readiness, abandoned only when stopping."""

from __future__ import annotations

import threading

import pytest

from deepsift.daemon.stream.retry import Abandoned, Backoff, retry_forever
from deepsift.engines.errors import RetryableError

FAST = Backoff(initial_s=0.001, max_s=0.004)


class Watch:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def dependency_failed(self, name: str, error: str) -> None:
        self.events.append(("failed", name))

    def dependency_ok(self, name: str) -> None:
        self.events.append(("ok", name))


def _flaky(failures: int):
    calls = []

    def operation() -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise RetryableError("database unavailable")
        return "stored"

    return operation, calls


def test_retryable_failures_are_retried_until_success_and_reported():
    operation, calls = _flaky(5)
    watch = Watch()
    assert (
        retry_forever(operation, dependency="database", stop=threading.Event(), watch=watch, backoff=FAST) == "stored"
    )
    assert len(calls) == 6
    assert watch.events == [("failed", "database")] * 5 + [("ok", "database")]


def test_other_errors_are_not_retried():
    def broken() -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        retry_forever(broken, dependency="database", stop=threading.Event(), watch=Watch(), backoff=FAST)


def test_a_stopping_daemon_abandons_the_retry():
    operation, _ = _flaky(10**9)
    stop = threading.Event()
    stop.set()
    with pytest.raises(Abandoned):
        retry_forever(operation, dependency="kafka", stop=stop, watch=Watch(), backoff=FAST)


def test_backoff_grows_to_its_ceiling_with_jitter():
    delays = Backoff(initial_s=1.0, max_s=8.0).delays()
    first = [next(delays) for _ in range(6)]
    assert 0.5 <= first[0] <= 1.0 and 1.0 <= first[1] <= 2.0
    assert all(4.0 <= d <= 8.0 for d in first[3:])
