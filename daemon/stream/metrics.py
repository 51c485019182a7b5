"""Prometheus metrics of the stream daemon, in a registry of their own (nothing global, nothing at import).

Names follow Prometheus conventions: counters end in ``_total``, durations are seconds. Scraped at
``GET /metrics`` of the health server.

The verdict metrics (``observe_verdict``) watch what each engine decides, serving and shadow alike, so alert
rules can see a drift before anyone queries SQL: ``deepsift_verdicts_stored_total`` by status, label and code
(rates of errors, ``no_face`` abstentions and ``uncertain`` labels), ``deepsift_verdict_p_fake`` (P(fake) of
every verdict that has one; its ``_sum``/``_count`` give the mean) and ``deepsift_verdict_faces`` (face scores
per judged job). Their labels stay bounded: engine names and versions of the store, the two roles, the statuses,
the labels an engine's manifest can give and the closed set of ``engines.codes``. ``deploy/prometheus`` has
alert rules on them.

Beside them the registry carries the process (``process_*``: CPU seconds, resident memory, open file descriptors)
and the Python platform (``python_info``), and ``deepsift_build_info{version, python}`` (value 1). Jobs count under
``deepsift_jobs_total{outcome}``, one series per outcome from the start (``OUTCOMES``). No ``*_created`` series are
served: prometheus_client's creation timestamps are switched off (a process-wide switch), as they double the
series without an alert that reads them.
"""

from __future__ import annotations

import contextlib
import platform
import queue
from collections.abc import Mapping
from importlib import metadata

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from deepsift.daemon.records import VerdictRecord

EMPTY_LABEL = ""  # a label value that does not apply (the code of an ok verdict, the label of an error)
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_PROBABILITIES = tuple(round(0.05 * i, 2) for i in range(1, 21))  # 0.05 … 1.0, every 0.05
_FACES = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512)  # le="0": judged without a face (whole-frame engines)
_ENGINE_LABELS = ("engine", "version", "role")
ROLES = ("serving", "shadow")
# a finished job's outcome (``Completion.outcome``): its verdict's status, or ``skipped`` (judged before; poison
# jobs are ``error`` verdicts with code ``poison_job``, dead letters and reused verdicts have counters of their own)
OUTCOMES = ("ok", "abstained", "error", "skipped")


def deepsift_version() -> str:
    """The installed package's version, ``unknown`` when run from a tree that was never installed."""
    try:
        return metadata.version("deepsift")
    except metadata.PackageNotFoundError:
        return "unknown"


class StreamMetrics:
    """Jobs by outcome, errors by code, stage latencies, batch sizes, queue depths, consumer lag."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        disable_created_metrics()
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.build = Gauge("deepsift_build_info", "The deepsift build (value 1)", ["version", "python"], registry=r)
        self.build.labels(version=deepsift_version(), python=platform.python_version()).set(1)
        self.jobs = Counter("deepsift_jobs", "Jobs finished (verdict stored), by outcome", ["outcome"], registry=r)
        for outcome in OUTCOMES:
            self.jobs.labels(outcome=outcome)
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
        self.verdicts = Counter(
            "deepsift_verdicts_stored", "Verdicts stored, by engine, role, status, label and (not ok) code",
            [*_ENGINE_LABELS, "status", "label", "code"], registry=r,
        )  # fmt: skip
        self.p_fake = Histogram(
            "deepsift_verdict_p_fake", "P(fake) of stored verdicts that have one, by engine and role",
            _ENGINE_LABELS, buckets=_PROBABILITIES, registry=r,
        )  # fmt: skip
        self.faces = Histogram(
            "deepsift_verdict_faces", "Face scores per ok or no_face verdict (0 for whole-frame engines)",
            _ENGINE_LABELS, buckets=_FACES, registry=r,
        )  # fmt: skip

    def watch_queues(self, queues: Mapping[str, queue.Queue]) -> None:
        """Queue depths are read at scrape time, not pushed by the stages."""
        for name, q in queues.items():
            self.queue_depth.labels(queue=name).set_function(q.qsize)

    def finished(self, outcome: str, code: str | None) -> None:
        self.jobs.labels(outcome=outcome).inc()
        if outcome == "error":
            self.errors.labels(code=code or "unknown").inc()

    def observe_verdict(self, record: VerdictRecord, role: str | None = None) -> None:
        """Count one newly stored verdict under its engine and role (``record.role`` unless given).

        Every verdict is counted, with ``code`` empty for ``ok`` ones and ``label`` empty for the others. P(fake) is
        observed where the verdict has one. Faces are the frame scores with a ``face_index``, observed for ``ok``
        and ``abstained`` verdicts only: an error verdict's media was never looked at for faces, so it has no
        count, not a count of 0."""
        role = record.role if role is None else role
        if role not in ROLES:
            raise ValueError(f"a verdict's role is one of {ROLES}, not {role!r}")
        engine = {"engine": record.engine.name, "version": str(record.engine.version), "role": role}
        judged = record.status == "ok"
        code_label = (None if judged else record.code) or EMPTY_LABEL  # codes: the closed VerdictCode set
        label = (record.label or EMPTY_LABEL) if judged else EMPTY_LABEL
        self.verdicts.labels(**engine, status=record.status, label=label, code=code_label).inc()
        if record.p_fake is not None:
            self.p_fake.labels(**engine).observe(record.p_fake)
        if record.status != "error":
            self.faces.labels(**engine).observe(sum(frame.face_index is not None for frame in record.frames))

    def forget_partition(self, topic: str, partition: int) -> None:
        """A revoked partition's lag belongs to its new owner."""
        with contextlib.suppress(KeyError):
            self.lag.remove(topic, str(partition))

    def render(self) -> bytes:
        return generate_latest(self.registry)
