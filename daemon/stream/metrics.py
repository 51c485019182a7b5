"""Prometheus metrics of the stream daemon, in a registry of their own (nothing global, nothing at import).

Names follow Prometheus conventions: counters end in ``_total``, durations are seconds. Scraped at
``GET /metrics`` of the health server.
"""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class StreamMetrics:
    """Jobs by outcome, errors by code, stage latencies, batch sizes, queue depths, consumer lag."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.jobs = Counter("deepsift_jobs", "Jobs finished (verdict stored), by outcome", ["outcome"], registry=r)
        self.errors = Counter("deepsift_job_errors", "Error verdicts by code", ["code"], registry=r)
        self.dead_letters = Counter("deepsift_dead_letters", "Dead-letter records produced", ["code"], registry=r)
        self.retries = Counter("deepsift_retries", "Retries while a dependency is down", ["dependency"], registry=r)
        self.commits = Counter("deepsift_offset_commits", "Offset commits, by result", ["result"], registry=r)
        self.stage_seconds = Histogram(
            "deepsift_stage_seconds", "Time per job (per batch for infer) in each stage", ["stage"],
            buckets=_SECONDS, registry=r,
        )  # fmt: skip
        self.job_seconds = Histogram(
            "deepsift_job_seconds", "Kafka record timestamp to verdict stored and offset committable",
            buckets=_SECONDS, registry=r,
        )  # fmt: skip
        self.batch_frames = Histogram("deepsift_batch_frames", "Frames per engine batch", buckets=_SIZES, registry=r)
        self.batch_jobs = Histogram("deepsift_batch_jobs", "Jobs per engine batch", buckets=_SIZES, registry=r)
        self.queue_depth = Gauge("deepsift_queue_depth", "Items waiting between stages", ["queue"], registry=r)
        self.in_flight = Gauge("deepsift_in_flight_jobs", "Jobs taken from Kafka, offset not committed", registry=r)
        self.assigned = Gauge("deepsift_partitions_assigned", "Partitions this consumer owns", registry=r)
        self.paused = Gauge("deepsift_partitions_paused", "Partitions paused because the pipeline is full", registry=r)
        self.lag = Gauge(
            "deepsift_consumer_lag", "Log end offset minus committed offset", ["topic", "partition"], registry=r
        )
        self.reused = Counter("deepsift_verdicts_reused", "Exact re-uploads answered from an earlier verdict",
                              registry=r)  # fmt: skip
        self.near_duplicates = Counter(
            "deepsift_near_duplicate_links", "Links stored from a verdict to an earlier similar one", registry=r
        )
        self.credentials = Counter(
            "deepsift_content_credentials", "Verdicts of media carrying C2PA credentials, by state", ["state"],
            registry=r,
        )  # fmt: skip
        self.engine = Gauge("deepsift_engine_info", "The engine served (value 1)", ["name", "version"], registry=r)

    def watch_queues(self, queues: Mapping[str, queue.Queue]) -> None:
        """Queue depths are read at scrape time, not pushed by the stages."""
        for name, q in queues.items():
            self.queue_depth.labels(queue=name).set_function(q.qsize)

    def finished(self, outcome: str, code: str | None) -> None:
        self.jobs.labels(outcome=outcome).inc()
        if outcome == "error":
            self.errors.labels(code=code or "unknown").inc()

    def forget_partition(self, topic: str, partition: int) -> None:
        """A revoked partition's lag belongs to its new owner."""
        with contextlib.suppress(KeyError):
            self.lag.remove(topic, str(partition))

    def render(self) -> bytes:
        return generate_latest(self.registry)
