"""How ``send_and_wait`` classifies the broker's answers: outages are retried, a refused record is not."""

from __future__ import annotations

import pytest
from kafka.errors import (
    InvalidRecordError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    RecordListTooLargeError,
    TopicAuthorizationFailedError,
)

from deepsift.daemon.broker.client import send_and_wait
from deepsift.engines.errors import RetryableError


class _Refusing:
    """A producer whose every send ends in ``error`` (the future's ``get`` raises it, as kafka-python's does)."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def send(self, topic: str, key: bytes | None = None, value: bytes | None = None) -> _Refusing:
        return self

    def get(self, timeout: float | None = None) -> None:
        raise self.error


@pytest.mark.parametrize("error", [KafkaTimeoutError(), NotLeaderForPartitionError(), TopicAuthorizationFailedError()])
def test_outages_and_authorization_are_retryable(error: Exception) -> None:
    with pytest.raises(RetryableError):
        send_and_wait(_Refusing(error), "t", b"k", b"v")  # type: ignore[arg-type]


@pytest.mark.parametrize("error", [MessageSizeTooLargeError(), RecordListTooLargeError(), InvalidRecordError()])
def test_a_refused_record_is_raised_as_it_is(error: Exception) -> None:
    with pytest.raises(type(error)):
        send_and_wait(_Refusing(error), "t", b"k", b"v")  # type: ignore[arg-type]
