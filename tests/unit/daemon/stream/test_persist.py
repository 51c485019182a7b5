"""Storing a verdict: dead letter first, then SQL, then the result event; outages wait, nothing is dropped."""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import replace

from daemon.records import EngineIdentity, VerdictRecord
from daemon.repository import SavedVerdict
from daemon.stream.metrics import StreamMetrics
from daemon.stream.persist import PersistContext, persist
from daemon.stream.work import Judged
from engines.errors import RetryableError

ENGINE = EngineIdentity("tiny", 1, "ab" * 32)


class Log:
    def __init__(self) -> None:
        self.calls: list[str] = []


class Repository:
    """Fails ``outage`` times with RetryableError before each save succeeds; ``refuse`` rejects ok verdicts."""

    def __init__(self, log: Log, outage: int = 0, refuse: bool = False) -> None:
        self.log, self.outage, self.refuse, self.saved = log, outage, refuse, []

    def save(self, record: VerdictRecord) -> SavedVerdict:
        if self.outage:
            self.outage -= 1
            raise RetryableError("database unavailable")
        if self.refuse and record.status == "ok":
            raise ValueError("value out of range")
        self.log.calls.append(f"save:{record.status}:{record.code}")
        self.saved.append(record)
        return SavedVerdict(len(self.saved), created=True)

    def get(self, verdict_id: int) -> VerdictRecord:
        self.log.calls.append(f"get:{verdict_id}")
        return _record("ok")


class Future:
    def __init__(self, fail: bool) -> None:
        self.fail = fail

    def get(self, timeout: float) -> None:
        if self.fail:
            from kafka.errors import KafkaTimeoutError

            raise KafkaTimeoutError("no broker")


class Producer:
    def __init__(self, log: Log, failures: int = 0) -> None:
        self.log, self.failures, self.sent = log, failures, []

    def send(self, topic: str, key: bytes, value: bytes) -> Future:
        if self.failures:
            self.failures -= 1
            return Future(fail=True)
        self.log.calls.append(f"send:{topic}")
        self.sent.append((topic, key, json.loads(value)))
        return Future(fail=False)


class Watch:
    def __init__(self) -> None:
        self.failed: list[str] = []

    def dependency_failed(self, name: str, error: str) -> None:
        self.failed.append(name)

    def dependency_ok(self, name: str) -> None:
        pass


def _record(status: str, code: str | None = None) -> VerdictRecord:
    return VerdictRecord(job_id="job-0", source="kafka", media_uri="file:///m/0.png", status=status, engine=ENGINE,
                         code=code, detail="why" if code else None, p_fake=0.7 if status == "ok" else None)  # fmt: skip


def _context(repository, producer, verdict_topic: str | None = "verdicts") -> PersistContext:
    watch = Watch()
    return PersistContext(repository, producer, "dead", verdict_topic, watch, StreamMetrics(), threading.Event())


def test_an_error_verdict_is_dead_lettered_before_it_is_stored_and_announced_after(make_work):
    log = Log()
    producer = Producer(log)
    context = _context(Repository(log), producer)
    work = make_work(0, 5, outcome=("error", "not_media", "why"))
    completion = persist(Judged(work, _record("error", "not_media")), context)
    assert log.calls == ["send:dead", "save:error:not_media", "send:verdicts"]
    assert (completion.outcome, completion.code, completion.ticket) == ("error", "not_media", work.envelope.ticket)
    letter = producer.sent[0][2]
    assert base64.b64decode(letter["value_b64"]) == work.envelope.value
    assert (letter["reason"], letter["offset"], letter["job_id"]) == ("not_media", 5, "job-0")


def test_outages_of_the_database_and_the_broker_are_waited_out(make_work):
    log = Log()
    repository, producer = Repository(log, outage=3), Producer(log, failures=2)
    context = _context(repository, producer)
    completion = persist(Judged(make_work(1, 0), _record("ok")), context)
    assert completion.outcome == "ok" and len(repository.saved) == 1
    assert context.watch.failed == ["database"] * 3 + ["kafka"] * 2
    assert log.calls == ["save:ok:None", "send:verdicts"]


def test_a_job_judged_before_is_not_stored_again_but_its_event_is_repeated(make_work):
    log = Log()
    completion = persist(Judged(make_work(0, 0), None), _context(Repository(log), Producer(log)))
    assert completion.outcome == "skipped"
    assert log.calls == ["get:99", "send:verdicts"]
    log.calls.clear()
    persist(Judged(make_work(0, 0), None), _context(Repository(log), Producer(log), verdict_topic=None))
    assert log.calls == []


def test_a_verdict_the_database_refuses_becomes_a_stored_error_with_a_dead_letter(make_work):
    log = Log()
    repository = Repository(log, refuse=True)
    completion = persist(Judged(make_work(1, 0), replace(_record("ok"))), _context(repository, Producer(log)))
    assert completion.outcome == "error" and repository.saved[0].code == "store_failed"
    assert log.calls == ["send:dead", "save:error:store_failed", "send:verdicts"]
