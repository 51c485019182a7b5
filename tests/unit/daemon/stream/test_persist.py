"""Storing a verdict: dead letter first, then SQL, then the result event; outages wait, nothing is dropped."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Sequence
from dataclasses import replace

import pytest
from kafka.errors import MessageSizeTooLargeError
from sqlalchemy import Engine, text

from deepsift.daemon.broker.sink import KafkaSink
from deepsift.daemon.pipeline import Outcome
from deepsift.daemon.records import EngineIdentity, VerdictRecord
from deepsift.daemon.repository import SavedVerdict, VerdictRepository
from deepsift.daemon.stream.metrics import StreamMetrics
from deepsift.daemon.stream.persist import PersistContext, persist
from deepsift.daemon.stream.retry import Abandoned, Backoff
from deepsift.daemon.stream.work import Judged
from deepsift.engines.errors import RetryableError

ENGINE = EngineIdentity("tiny", 1, "ab" * 32)


class Log:
    def __init__(self) -> None:
        self.calls: list[str] = []


class Repository:
    """Fails ``outage`` times with RetryableError before each save succeeds; ``refuse`` rejects ok verdicts."""

    def __init__(self, log: Log, outage: int = 0, refuse: bool = False) -> None:
        self.log, self.outage, self.refuse, self.saved = log, outage, refuse, []

    def save(self, record: VerdictRecord, shadows: Sequence[VerdictRecord] = ()) -> SavedVerdict:
        if self.outage:
            self.outage -= 1
            raise RetryableError("database unavailable")
        if self.refuse and record.status == "ok":
            raise ValueError("value out of range")
        self.log.calls.append(f"save:{record.status}:{record.code}")
        self.saved += [record, *shadows]
        return SavedVerdict(len(self.saved) - len(shadows), created=True)

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
    """Fails ``failures`` sends as an outage; refuses values over ``max_bytes`` as kafka-python does; ``refuse``
    raises for every send to that topic (a per-message error that is no outage)."""

    def __init__(self, log: Log, failures: int = 0, max_bytes: int = 1 << 20, refuse: str | None = None) -> None:
        self.log, self.failures, self.sent = log, failures, []
        self.max_bytes, self.refuse = max_bytes, refuse

    def send(self, topic: str, key: bytes, value: bytes) -> Future:
        if self.failures:
            self.failures -= 1
            return Future(fail=True)
        if len(value) > self.max_bytes:
            raise MessageSizeTooLargeError(f"{len(value)} bytes")
        if topic == self.refuse:
            raise ValueError("refused")
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
    watch, metrics, stop = Watch(), StreamMetrics(), threading.Event()
    sink = KafkaSink(producer, "dead", verdict_topic, watch, metrics, stop)
    return PersistContext(repository, sink, watch, metrics, stop)


def test_an_error_verdict_is_dead_lettered_before_it_is_stored_and_announced_after(make_work):
    log = Log()
    producer = Producer(log)
    context = _context(Repository(log), producer)
    work = make_work(0, 5, outcome=Outcome.error("not_media", "why"))
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


# --- against a real SQLite database: what it refuses never ends the stage -------------------------------


@pytest.fixture
def database(sqlite_database) -> Engine:
    engine = sqlite_database
    with engine.begin() as connection:  # the database refuses some rows outright, as a constraint would
        connection.execute(text(
            "CREATE TRIGGER refuse BEFORE INSERT ON verdicts WHEN NEW.job_id LIKE 'refused-%' "
            "BEGIN SELECT RAISE(ABORT, 'refused by the database'); END"
        ))  # fmt: skip
    return engine


QUICK = Backoff(0.01, 0.02)


def _real_context(database, producer, backoff: Backoff = QUICK) -> PersistContext:
    watch, metrics, stop = Watch(), StreamMetrics(), threading.Event()
    sink = KafkaSink(producer, "dead", "verdicts", watch, metrics, stop)
    return PersistContext(VerdictRepository(database), sink, watch, metrics, stop, store_backoff=backoff)


def _letters(producer: Producer, topic: str = "dead") -> list[dict]:
    return [value for sent_topic, _, value in producer.sent if sent_topic == topic]


def test_a_verdict_the_database_refuses_is_replaced_by_a_bare_error_verdict(make_work, database):
    # Given an ok verdict with a value SQLite cannot store (an integer beyond 64 bits)
    producer = Producer(Log())
    context = _real_context(database, producer)
    record = replace(_record("ok"), job_id="big-1", size_bytes=2**70, metadata={"m": 1})
    # When it is persisted
    completion = persist(Judged(make_work(1, 4), record), context)
    # Then a bare store_failed verdict is stored instead, dead-lettered with the reason, and announced
    assert (completion.outcome, completion.code) == ("error", "store_failed")
    stored = context.repository.get(context.repository.find_id("big-1", ENGINE))
    assert (stored.status, stored.code, stored.size_bytes, stored.metadata) == ("error", "store_failed", None, {})
    assert "OverflowError" in stored.detail
    assert [letter["reason"] for letter in _letters(producer)] == ["store_failed"]
    assert [event["code"] for event in _letters(producer, "verdicts")] == ["store_failed"]


def test_a_job_whose_error_verdict_is_refused_too_is_dead_lettered_and_still_completed(make_work, database):
    # Given a job the database refuses whatever its verdict holds
    producer = Producer(Log())
    context = _real_context(database, producer)
    record = replace(_record("error", "not_media"), job_id="refused-1")
    # When it is persisted
    completion = persist(Judged(make_work(0, 9, outcome=Outcome.error("not_media", "why")), record), context)
    # Then after a few tries it is completed as unstorable (its offset will be committed), with no row
    assert (completion.outcome, completion.code, completion.ticket.offset) == ("error", "unstorable", 9)
    assert context.repository.find_id("refused-1", ENGINE) is None
    # and its dead letters say so: its own reason, the replacement's, and that nothing could be stored
    letters = _letters(producer)
    assert [letter["reason"] for letter in letters] == ["not_media", "store_failed", "unstorable"]
    assert "refused by the database" in letters[-1]["detail"]
    assert _letters(producer, "verdicts") == []


def test_stopping_while_the_database_refuses_leaves_the_job_uncommitted(make_work, database):
    context = _real_context(database, Producer(Log()), backoff=Backoff(5.0, 5.0))
    context.stop.set()
    with pytest.raises(Abandoned):
        persist(Judged(make_work(1, 0), replace(_record("ok"), job_id="refused-2")), context)


def test_a_result_event_the_broker_finds_too_large_is_sent_truncated(make_work, database):
    # Given a broker that takes records of at most 2 KiB, and a verdict echoing 10 KiB of metadata
    producer = Producer(Log(), max_bytes=2048)
    context = _real_context(database, producer)
    record = replace(_record("ok"), job_id="meta-1", metadata={"blob": "m" * 10_000})
    # When it is persisted
    completion = persist(Judged(make_work(1, 0), record), context)
    # Then the verdict is stored whole and its event is sent in the truncated form, marked
    assert completion.outcome == "ok"
    assert context.repository.get(context.repository.find_id("meta-1", ENGINE)).metadata == record.metadata
    [event] = _letters(producer, "verdicts")
    assert event["truncated"] is True and event["metadata"] == {"truncated": True, "bytes": 10_012}


def test_a_dead_letter_the_broker_finds_too_large_keeps_the_start_of_the_message(make_work, make_envelope, database):
    producer = Producer(Log(), max_bytes=100_000)
    context = _real_context(database, producer)
    work = replace(
        make_work(0, 2, outcome=Outcome.error("invalid_job", "why")), envelope=make_envelope(2, b"v" * 200_000)
    )
    completion = persist(Judged(work, replace(_record("error", "invalid_job"), job_id="huge-1")), context)
    assert completion.code == "invalid_job"
    [letter] = _letters(producer)
    assert letter["truncated"] and letter["value_bytes"] == 200_000
    assert base64.b64decode(letter["value_b64"]) == b"v" * (64 << 10)


def test_a_result_event_refused_for_another_reason_is_left_out(make_work, database):
    producer = Producer(Log(), refuse="verdicts")
    context = _real_context(database, producer)
    completion = persist(Judged(make_work(1, 0), replace(_record("ok"), job_id="event-1")), context)
    assert completion.outcome == "ok" and context.repository.find_id("event-1", ENGINE) is not None
    assert _letters(producer, "verdicts") == []


def test_a_job_judged_before_whose_verdict_is_gone_still_completes(make_work, database):
    producer = Producer(Log())
    completion = persist(Judged(make_work(0, 0), None), _real_context(database, producer))  # stored_id 99: none
    assert completion.outcome == "skipped" and producer.sent == []
