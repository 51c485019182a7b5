"""The Kafka sink of ``daemon run``: dead letters for error verdicts, result events after verdicts are stored.

Each record is produced in the first of its forms the broker takes (``outbound``: full, truncated, minimal),
waiting out broker outages for as long as they last; a refusal that is not an outage is logged and the record
left out, since trying it again would fail the same way. Both are at least once (a crash between the SQL commit
and the offset commit repeats the event).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

import structlog
from kafka import KafkaProducer
from kafka.errors import MessageSizeTooLargeError

from deepsift.daemon.broker.client import send_and_wait
from deepsift.daemon.records import VerdictRecord
from deepsift.daemon.stream.metrics import StreamMetrics
from deepsift.daemon.stream.outbound import Form, dead_letter, fitted, record_key, verdict_event
from deepsift.daemon.stream.retry import Abandoned, DependencyWatch, retry_forever
from deepsift.daemon.stream.work import Envelope

log = structlog.get_logger(__name__)


class KafkaSink:
    """Dead letters on ``dead_letter_topic``; result events on ``verdict_topic`` when one is set."""

    def __init__(
        self,
        producer: KafkaProducer,
        dead_letter_topic: str,
        verdict_topic: str | None,
        watch: DependencyWatch,
        metrics: StreamMetrics,
        stop: threading.Event,
    ) -> None:
        self.producer = producer
        self.dead_letter_topic = dead_letter_topic
        self.verdict_topic = verdict_topic
        self.watch = watch
        self.metrics = metrics
        self.stop = stop

    @property
    def wants_events(self) -> bool:
        return bool(self.verdict_topic)

    def dead_letter(self, envelope: Envelope, record: VerdictRecord) -> None:
        """The original message and the reason, acknowledged by the broker before the verdict is stored."""
        build = functools.partial(dead_letter, envelope, record)
        form = self._produce(self.dead_letter_topic, record.job_id, build)
        if form is None:
            return
        self.metrics.dead_letters.labels(code=record.code or "unknown").inc()
        ticket = envelope.ticket
        log.warning("dead_letter", job_id=record.job_id, code=record.code, detail=record.detail, topic=ticket.topic,
                    partition=ticket.partition, offset=ticket.offset, form=form)  # fmt: skip

    def publish(self, record: VerdictRecord, verdict_id: int) -> None:
        if self.verdict_topic:
            self._produce(self.verdict_topic, record.job_id, functools.partial(verdict_event, record, verdict_id))

    def close(self) -> None:
        self.producer.close(timeout=5)

    def _produce(self, topic: str, job_id: str, build: Callable[[Form], bytes]) -> Form | None:
        """Produce the first form of a record the broker takes, waiting out outages; the form, or None if none was.

        A form too large is followed by a smaller one; any other refusal (not an outage) is logged and the
        record left out."""
        try:
            key = record_key(job_id)
            for form, value in fitted(build):
                try:
                    send = functools.partial(send_and_wait, self.producer, topic, key, value)
                    retry_forever(send, dependency="kafka", stop=self.stop, watch=self.watch, job_id=job_id)
                    return form
                except MessageSizeTooLargeError:
                    log.warning("record_too_large", job_id=job_id, topic=topic, form=form, bytes=len(value))
        except Abandoned:
            raise
        except Exception:
            log.exception("record_not_produced", job_id=job_id, topic=topic)
            return None
        log.error("record_not_produced", job_id=job_id, topic=topic, reason="too large in every form")
        return None
