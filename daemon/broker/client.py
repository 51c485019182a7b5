"""Kafka clients: configuration (security from settings), the consumer, the producer, commits.

kafka-python ≥ 3 drives its network on an IO thread and calls rebalance listeners there, so the
listener is an ``AsyncConsumerRebalanceListener`` that awaits its commit instead of blocking the loop
that also sends heartbeats. The rest of the daemon sees ``(topic, partition)`` keys, not Kafka types.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import structlog
from kafka import AsyncConsumerRebalanceListener, KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
from kafka.errors import AuthorizationError, BrokerResponseError, KafkaError, MessageSizeTooLargeError

from deepsift.daemon.settings import Settings
from deepsift.daemon.stream.offsets import PartitionKey
from deepsift.engines.errors import RetryableError

log = structlog.get_logger(__name__)

T = TypeVar("T")

SEND_TIMEOUT_S = 30.0
COMMIT_TIMEOUT_MS = 10_000


def client_config(settings: Settings) -> dict[str, Any]:
    """Connection and security settings shared by the consumer, the producers and admin clients."""
    config: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in settings.kafka_bootstrap_servers.split(",") if s.strip()],
        "security_protocol": settings.kafka_security_protocol,
        "client_id": f"deepsift-{socket.gethostname()}",
    }
    if settings.kafka_sasl_mechanism:
        password = settings.kafka_sasl_password
        config.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=password.get_secret_value() if password else None,
        )
    for name in ("cafile", "certfile", "keyfile"):
        value = getattr(settings, f"kafka_ssl_{name}")
        if value is not None:
            config[f"ssl_{name}"] = str(value)
    return config


def make_consumer(settings: Settings, max_poll_records: int) -> KafkaConsumer:
    """A group member that never commits on its own: offsets move only after verdicts are in SQL."""
    return KafkaConsumer(
        group_id=settings.kafka_group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",  # a new group starts with the jobs already waiting
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
        # a request to a silent broker fails after this and is retried on a new connection (kafka-python ≥ 3 waits
        # longer for JoinGroup on its own: up to the rebalance timeout, so joining is not cut short)
        request_timeout_ms=settings.kafka_request_timeout_ms,
        max_poll_records=max_poll_records,
        allow_auto_create_topics=False,
        **client_config(settings),
    )


def make_producer(settings: Settings) -> KafkaProducer:
    """For dead letters and result events: acknowledged by all in-sync replicas before a job counts as done.

    A send waits for metadata at most one request timeout (kafka-python's default is 60 s), so a silent broker
    becomes a retryable error in about the time the acknowledgement would have taken.
    """
    timeout_ms = settings.kafka_request_timeout_ms
    return KafkaProducer(
        acks="all", linger_ms=2, request_timeout_ms=timeout_ms, max_block_ms=timeout_ms, **client_config(settings)
    )


def to_keys(partitions: Iterable[TopicPartition]) -> set[PartitionKey]:
    return {(tp.topic, tp.partition) for tp in partitions}


def to_offsets(offsets: dict[PartitionKey, int]) -> dict[TopicPartition, OffsetAndMetadata]:
    return {TopicPartition(t, p): OffsetAndMetadata(offset, "", -1) for (t, p), offset in offsets.items()}


class PartitionListener(AsyncConsumerRebalanceListener):
    """Commits what is done for partitions being revoked, and tells the daemon the new assignment."""

    def __init__(
        self,
        consumer: KafkaConsumer,
        assigned: Callable[[set[PartitionKey]], None],
        revoking: Callable[[set[PartitionKey]], dict[PartitionKey, int]],
        committed: Callable[[dict[PartitionKey, int]], None],
    ) -> None:
        self._consumer = consumer
        self._assigned = assigned
        self._revoking = revoking
        self._committed = committed

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        offsets = self._revoking(to_keys(revoked))
        if not offsets:
            return
        try:
            await self._consumer.commit_async(to_offsets(offsets))
        except Exception as e:  # the next owner starts from the last commit; stored verdicts are skipped
            log.warning("revocation_commit_failed", error=repr(e))
            return
        self._committed(offsets)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Hands over the whole assignment (an eager rebalance passes it all; a cooperative one, the new part)."""
        self._assigned(to_keys(self._consumer.assignment()))

    async def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        """Evicted from the group: nothing may be committed; the next assignment says what stays ours."""
        log.warning("partitions_lost", partitions=sorted(f"{tp.topic}/{tp.partition}" for tp in lost))


def send_and_wait(producer: KafkaProducer, topic: str, key: bytes | None, value: bytes) -> None:
    """Produce one record and wait for its acknowledgement; broker trouble is a ``RetryableError``.

    A broker's refusal of this one record (too large, invalid, corrupt: a non-retriable broker response) is
    raised as it is, so the caller can shrink or drop the record instead of retrying it forever. Authorization
    failures stay retryable: they are configuration an operator fixes, and dropping records meanwhile would
    lose them."""
    try:
        producer.send(topic, key=key, value=value).get(timeout=SEND_TIMEOUT_S)
    except MessageSizeTooLargeError:
        raise
    except BrokerResponseError as e:
        if not e.retriable and not isinstance(e, AuthorizationError):
            raise
        raise RetryableError(f"kafka unavailable: {type(e).__name__}: {e}") from e
    except KafkaError as e:
        raise RetryableError(f"kafka unavailable: {type(e).__name__}: {e}") from e


def kafka_call(make: Callable[..., T], *args: object) -> T:
    """Kafka clients fail to construct while no broker answers: that is an outage, not a bug."""
    try:
        return make(*args)
    except KafkaError as e:
        raise RetryableError(f"kafka unavailable: {type(e).__name__}: {e}") from e
