"""The broker's readiness probe: a small admin client of its own, bounded by the dependency timeout.

Run by ``daemon.stream.probes`` beside the database's; this module holds the kafka-python part.
"""

from __future__ import annotations

from typing import Any

from kafka import KafkaAdminClient
from kafka.net.compat import KafkaNetClient  # the admin client's default network client

from deepsift.engines.errors import ConfigurationError


class BrokerCheck:
    """Asks the cluster to describe itself through a small admin client of its own.

    kafka-python bounds each request with ``request_timeout_ms`` and each connection set-up with
    ``socket_connection_setup_timeout_ms`` (a setting of its network client, passed through ``kafka_client``), so
    a check returns within about ``timeout_s`` even when the broker is silent; ``abort`` has nothing to do. An
    admin client bootstraps while it is made: one that fails to is closed here, since kafka-python leaves its IO
    thread running.

    ``topic``, when given, must be among the cluster's topics: the consumer never creates it (auto-creation is off),
    so a missing jobs topic would otherwise leave the daemon unready with no reason given. Listing every topic
    asks for no topic by name, so it creates none even on a broker that auto-creates topics.
    """

    name = "kafka"

    def __init__(self, client_config: dict[str, Any], timeout_s: float, topic: str | None = None) -> None:
        timeout_ms = max(1000, round(timeout_s * 1000))
        self._config = {
            **client_config,
            "request_timeout_ms": timeout_ms,
            "bootstrap_timeout_ms": timeout_ms,
            "reconnect_backoff_max_ms": 1000,  # the default (30 s) would keep a recovered broker unready
        }
        self._setup_timeout_ms = timeout_ms
        self._topic = topic
        self._admin: KafkaAdminClient | None = None

    def check(self) -> None:
        if self._admin is None:
            self._admin = self._connect()
        self._admin.describe_cluster()
        if self._topic is not None and self._topic not in self._admin.list_topics():
            raise MissingTopic(self._topic)

    def abort(self) -> None:
        return

    def close(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            admin.close()

    def _connect(self) -> KafkaAdminClient:
        made: list[KafkaNetClient] = []

        def network_client(**config: Any) -> KafkaNetClient:
            config.update(
                socket_connection_setup_timeout_ms=self._setup_timeout_ms,
                socket_connection_setup_timeout_max_ms=self._setup_timeout_ms,
            )
            made.append(KafkaNetClient(**config))
            return made[-1]

        try:
            return KafkaAdminClient(**self._config, kafka_client=network_client)
        except BaseException:
            for client in made:
                client.close()
            raise


class MissingTopic(ConfigurationError):
    """The broker answers but has no such topic: no wait fixes that until someone creates it."""

    def __init__(self, topic: str) -> None:
        super().__init__(f"topic {topic!r} does not exist on the broker (create it, or correct kafka_topic)")
        self.topic = topic
