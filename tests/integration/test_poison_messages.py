"""Hostile job messages against a real `daemon run`, the tansu broker and PostgreSQL: none stops the daemon.

Each message is answered exactly once: one verdict row under its own job id (when that is readable and
safe) or under ``invalid:TOPIC:PARTITION:OFFSET``, a dead letter for each error verdict, every offset
committed, and the daemon still alive and draining cleanly at the end. The crafted messages of issue 19
are checked one by one; then Hypothesis generates a batch of mutated jobs that one daemon answers.
"""

from __future__ import annotations

import base64
import hashlib
import json
import signal
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SUBMITTED_AT = "2025-03-01T12:00:00+00:00"
MAX_REQUEST_BYTES = 4 << 20  # the test producer sends messages larger than the daemon's 1 MiB job limit


@dataclass(frozen=True)
class Sent:
    """A message on the jobs topic and the ids its verdict may be stored under."""

    name: str
    value: bytes | None
    partition: int
    offset: int
    own_id: str | None  # the job id a JSON parser reads from it, if that is a string SQL and Kafka can hold

    def candidates(self, topic: str) -> set[str]:
        positional = f"invalid:{topic}:{self.partition}:{self.offset}"
        return {positional} if self.own_id is None else {positional, self.own_id}


def _document(stream, name: str, **changes: Any) -> dict[str, Any]:
    """A valid v1 job for one of the test images, under a job id unique to this test."""
    document = {
        "schema_version": 1,
        "job_id": f"{stream.group}-{name}",
        "media_url": (stream.media / "image_0.png").as_uri(),
        "submitted_at": SUBMITTED_AT,
        "metadata": {"case": name},
    }
    return {**document, **changes}


def _with_raw(document: dict[str, Any], field: str, token: bytes) -> bytes:
    """The document as JSON with ``field``'s value replaced by raw JSON text json.dumps would never write."""
    hole = "\x01hole\x01"
    text = json.dumps({**document, field: hole}).encode()
    return text.replace(json.dumps(hole).encode(), token)


def _own_id(value: bytes | None) -> str | None:
    """The job id Python's own JSON parser reads, kept only if PostgreSQL and a Kafka key could hold it."""
    try:
        found = json.loads(value or b"", strict=False).get("job_id")
        found.encode()
    except Exception:  # unparseable, too deep, not an object, no string id, not encodable
        return None
    return found if isinstance(found, str) and "\x00" not in found else None


def _produce(stream, named: list[tuple[str, bytes | None]]) -> list[Sent]:
    """Produce the values round robin over the partitions (large ones too) and wait for every ack; each has a key,
    since Kafka takes a message without a value only with one."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=stream.broker.bootstrap, acks="all", max_request_size=MAX_REQUEST_BYTES)
    try:
        futures = [
            producer.send(stream.topic, key=b"%d" % i, value=value, partition=i % stream.partitions)
            for i, (_, value) in enumerate(named)
        ]
        placed = [future.get(timeout=60) for future in futures]
    finally:
        producer.close(timeout=10)
    return [
        Sent(name, value, meta.partition, meta.offset, _own_id(value))
        for (name, value), meta in zip(named, placed, strict=True)
    ]


def _records_in(stream, topic: str) -> int:
    """How many records the (one-partition) topic holds: its end offset."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=stream.broker.bootstrap)
    try:
        return consumer.end_offsets([TopicPartition(topic, 0)])[TopicPartition(topic, 0)]
    finally:
        consumer.close()


def _committed_total(stream) -> int:
    return sum(o or 0 for o in stream.broker.committed(stream.group, stream.topic, stream.partitions).values())


def _assert_answered_once(stream, daemon, sent: list[Sent]) -> tuple[dict[str, dict], dict[str, dict]]:
    """Every message has one verdict (under one of its ids), error verdicts one dead letter each, offsets committed,
    and the daemon is alive; the verdicts and the dead letters by message name."""
    n = len(sent)
    stream.wait(lambda: _committed_total(stream) == n or daemon.process.poll() is not None, 150, f"{n} commits")
    assert daemon.process.poll() is None, f"the daemon died:\n{daemon.log()[-4000:]}"
    assert daemon.get("/healthz/live")[0] == 200
    assert not daemon.events("stage_crashed")
    # one verdict row per message, under its own id or its positional one, and no other rows
    candidates = [s.candidates(stream.topic) for s in sent]
    rows = stream.verdicts(sorted(set().union(*candidates)))
    per_id = Counter(row["job_id"] for row in rows)
    for message, ids in zip(sent, candidates, strict=True):
        assert sum(per_id[i] for i in ids) == 1, (message.name, message.value and message.value[:300], per_id)
    assert len(rows) == n
    verdicts = {
        message.name: next(row for row in rows if row["job_id"] in ids)
        for message, ids in zip(sent, candidates, strict=True)
    }
    # one dead letter per error verdict, naming where its message sat and carrying its bytes (or their start)
    errors = [message for message in sent if verdicts[message.name]["status"] == "error"]
    letters = [json.loads(r.value) for r in stream.broker.read(stream.dead_letter_topic, len(errors), timeout=60)]
    by_place = Counter((letter["partition"], letter["offset"]) for letter in letters)
    assert _records_in(stream, stream.dead_letter_topic) == len(errors) and set(by_place.values()) == {1}, by_place
    letter_at = {(letter["partition"], letter["offset"]): letter for letter in letters}
    for message in errors:
        letter = letter_at[(message.partition, message.offset)]
        assert letter["job_id"] == verdicts[message.name]["job_id"]
        assert letter["reason"] == verdicts[message.name]["code"]
        kept = base64.b64decode(letter["value_b64"])
        assert (message.value or b"").startswith(kept) and (letter["value_truncated"] or kept == (message.value or b""))
    return verdicts, {message.name: letter_at[(message.partition, message.offset)] for message in errors}


def _stop_cleanly(daemon) -> None:
    daemon.stop(signal.SIGTERM)
    assert daemon.wait(timeout=40) == 0


# --- (a) the crafted messages of issue 19, one by one ----------------------------------------------------


def test_the_crafted_messages_of_issue_19_are_each_answered_once(postgres_url, stream_setup, start_daemon):
    # Given a daemon on PostgreSQL, and the messages that used to kill it (plus a good job beside them)
    stream = stream_setup(postgres_url, partitions=2)
    daemon = start_daemon(stream.settings)

    def doc(name: str, **changes: Any) -> dict[str, Any]:
        return _document(stream, name, **changes)

    nested = b"[" * 100_000 + b"]" * 100_000
    named = [
        ("good", json.dumps(doc("good")).encode()),
        ("deep nesting", _with_raw(doc("deep"), "metadata", b'{"a": ' + nested + b"}")),
        ("lone surrogate id", json.dumps(doc("x", job_id=f"{stream.group}-surrogate-\ud800")).encode()),
        ("NUL in metadata", json.dumps(doc("nul-meta", metadata={"k": "a\u0000b"})).encode()),
        ("NUL in media_url", json.dumps(doc("nul-url", media_url=f"file://{stream.media}/a\u0000.png")).encode()),
        ("NaN in metadata", _with_raw(doc("nan"), "metadata", b'{"score": NaN}')),
        ("1.5 MB of metadata", json.dumps(doc("huge", metadata={"blob": "x" * (1536 << 10)})).encode()),
        ("random bytes", hashlib.shake_256(b"deepsift").digest(4096)),
        ("empty value", b""),
        ("no value", None),
    ]
    # When they are produced
    sent = _produce(stream, named)
    # Then each is answered once and the daemon lives on
    verdicts, letters = _assert_answered_once(stream, daemon, sent)
    assert verdicts["good"]["status"] == "ok" and "good" not in letters
    for message in sent[1:]:
        verdict = verdicts[message.name]
        assert (verdict["status"], verdict["code"]) == ("error", "invalid_job"), (message.name, verdict)
    # under the producer's id when it is readable and safe, else under the message's position
    positional = {m.name: f"invalid:{stream.topic}:{m.partition}:{m.offset}" for m in sent}
    expected_ids = {
        "deep nesting": positional["deep nesting"],  # the parser refuses the document: no field is read
        "lone surrogate id": positional["lone surrogate id"],
        "NUL in metadata": f"{stream.group}-nul-meta",
        "NUL in media_url": f"{stream.group}-nul-url",
        "NaN in metadata": f"{stream.group}-nan",
        "1.5 MB of metadata": f"{stream.group}-huge",
        "random bytes": positional["random bytes"],
        "empty value": positional["empty value"],
        "no value": positional["no value"],
    }
    assert {name: verdicts[name]["job_id"] for name in expected_ids} == expected_ids
    assert "more than 1048576" in verdicts["1.5 MB of metadata"]["detail"]
    huge = letters["1.5 MB of metadata"]  # too large for the broker whole: its start, marked
    assert huge["truncated"] and huge["value_truncated"] and huge["value_bytes"] == len(sent[6].value or b"")
    assert "\x00" not in verdicts["NUL in media_url"]["media_uri"]
    _stop_cleanly(daemon)


# --- (b) Hypothesis: mutated jobs, one batch, one daemon --------------------------------------------------

_TEXT_TOKENS = [b"\\u0000", b"\\ud800", b"\\udfff", b"\xed\xa0\x80", b"\xff", b"\\u00e9", b"\\ud83d\\ude00", b"\t"]
_VALUE_TOKENS = [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"1" + b"0" * 400, b"-0", b"1.5", b"true", b"null",
                 b"[]", b"{}", b'"x"', b"0", b"-1", b"99999999999999999999999"]  # fmt: skip
_FIELDS = ["job_id", "media_url", "submitted_at", "schema_version", "media_type", "content_sha256", "options",
           "metadata"]  # fmt: skip


@dataclass(frozen=True)
class Mutation:
    """How one valid job is made hostile: ``kind`` with its field and raw token, or a whole value."""

    kind: str
    field: str = ""
    token: bytes = b""

    def apply(self, document: dict[str, Any]) -> bytes | None:
        if self.kind == "whole":  # random bytes, or a message with no value at all
            return None if self.field == "none" else self.token
        if self.kind == "string":  # a hostile piece inside the field's string
            inner = json.dumps(str(document.get(self.field, ""))).encode()[1:-1]
            return _with_raw(document, self.field, b'"' + inner + self.token + b'"')
        if self.kind == "metadata_key":
            return _with_raw(document, "metadata", b'{"k' + self.token + b'": 1}')
        if self.kind == "metadata_value":
            return _with_raw(document, "metadata", b'{"k": ' + self.token + b"}")
        if self.kind == "extra_key":  # an unknown key, at the top or in the options
            if self.field == "options":
                return _with_raw(document, "options", b'{"frames": 4, "surprise": 1}')
            return _with_raw(document, "metadata", json.dumps(document["metadata"]).encode() + b', "surprise": 1')
        if self.kind == "truncated":  # cut short after len(token) bytes
            text = json.dumps(document).encode()
            return text[: len(self.token) % len(text)]
        return _with_raw(document, self.field, self.token)  # "value": the field is the raw token


def _nesting(depth: int, opener: bytes) -> bytes:
    closer = b"]" if opener == b"[" else b"}"
    item = b"[" if opener == b"[" else b'{"a":'
    return item * depth + (b"" if opener == b"[" else b"1") + closer * depth


_MUTATIONS = st.one_of(
    st.builds(Mutation, st.just("string"), st.sampled_from(["job_id", "media_url", "submitted_at"]),
              st.sampled_from(_TEXT_TOKENS)),
    st.builds(Mutation, st.just("metadata_key"), st.just(""), st.sampled_from(_TEXT_TOKENS)),
    st.builds(Mutation, st.just("metadata_value"), st.just(""), st.sampled_from(_VALUE_TOKENS)),
    st.builds(Mutation, st.just("metadata_value"), st.just(""),
              st.builds(_nesting, st.integers(7, 5000), st.sampled_from([b"[", b"{"]))),
    st.builds(Mutation, st.just("metadata_value"), st.just(""),
              st.integers(60_000, 200_000).map(lambda n: b'"' + b"x" * n + b'"')),
    st.builds(Mutation, st.just("value"), st.sampled_from(_FIELDS), st.sampled_from(_VALUE_TOKENS)),
    st.builds(Mutation, st.just("extra_key"), st.sampled_from(["options", "top"])),
    st.builds(Mutation, st.just("truncated"), st.just(""), st.integers(1, 400).map(lambda n: b"." * n)),
    st.builds(Mutation, st.just("whole"), st.sampled_from(["bytes", "none"]), st.binary(max_size=3000)),
)  # fmt: skip


def _hostile_batch(size: int) -> list[Mutation]:
    """``size`` mutations drawn by Hypothesis, the same on every run (derandomized, nothing stored)."""
    drawn: list[Mutation] = []

    @settings(max_examples=size, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(_MUTATIONS)
    def draw(mutation: Mutation) -> None:
        drawn.append(mutation)

    draw()
    return drawn


def test_generated_hostile_jobs_are_each_answered_once(postgres_url, stream_setup, start_daemon):
    # Given a daemon on PostgreSQL, and 50 valid jobs each mutated by Hypothesis into something hostile
    stream = stream_setup(postgres_url, partitions=2)
    daemon = start_daemon(stream.settings)
    mutations = _hostile_batch(50)
    assert len({m.kind for m in mutations}) >= 6, "the batch covers most kinds of mutation"
    named = [
        (f"{i:02d}-{m.kind}-{m.field}", m.apply(_document(stream, f"h{i:02d}", media_url=_image(stream, i))))
        for i, m in enumerate(mutations)
    ]
    # When they are all produced
    sent = _produce(stream, named)
    # Then each is answered once, and the daemon is alive and drains cleanly
    verdicts, _ = _assert_answered_once(stream, daemon, sent)
    assert {v["status"] for v in verdicts.values()} <= {"ok", "error"}
    assert any(v["status"] == "error" for v in verdicts.values())
    _stop_cleanly(daemon)


def _image(stream, i: int) -> str:
    return (stream.media / f"image_{i % 8}.png").as_uri()
