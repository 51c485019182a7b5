"""Kafka at the edge, and nowhere else: the ``kafka`` job source (consumer, offsets), the Kafka sink (dead
letters, result events), the clients and the broker's readiness probe. Every kafka-python import of the daemon
lives in this package; the pipeline sees ``JobSource`` and ``ResultSink``."""
