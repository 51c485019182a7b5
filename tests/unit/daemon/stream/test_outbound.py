"""Dead letters and result events: strict JSON whatever the verdict holds, truncated with a marker when too large."""

from __future__ import annotations

import base64

import pytest
from pydantic_core import from_json

from deepsift.daemon.records import EngineIdentity, VerdictRecord
from deepsift.daemon.stream.outbound import (
    MAX_RECORD_BYTES,
    TRUNCATED_VALUE_BYTES,
    dead_letter,
    fitted,
    record_key,
    verdict_event,
)

ENGINE = EngineIdentity("tiny", 1, "ab" * 32)


def _record(**changes: object) -> VerdictRecord:
    fields: dict = dict(job_id="job-1", source="kafka", media_uri="file:///m/1.png", status="error", engine=ENGINE,
                        code="invalid_job", detail="why", metadata={"uploader": "u-1"})  # fmt: skip
    return VerdictRecord(**{**fields, **changes})


def _strict(value: bytes) -> dict:
    """Parsed as a strict consumer would: no NaN or Infinity, valid UTF-8, no lone surrogates."""
    return from_json(value, allow_inf_nan=False)


def test_a_small_dead_letter_is_produced_whole(make_envelope):
    envelope = make_envelope(7, b'{"job": 1}')
    forms = list(fitted(lambda form: dead_letter(envelope, _record(), form)))
    # the full form fits, so it is tried first; the smaller forms follow only in case the broker refuses it
    assert [form for form, _ in forms] == ["full", "truncated", "minimal"]
    letter = _strict(forms[0][1])
    assert base64.b64decode(letter["value_b64"]) == b'{"job": 1}' and base64.b64decode(letter["key_b64"]) == b"key"
    assert (letter["truncated"], letter["value_truncated"], letter["offset"]) == (False, False, 7)


def test_a_dead_letter_too_large_for_the_broker_keeps_the_start_of_the_message(make_envelope):
    # Given a message whose base64 alone exceeds what the broker takes
    value = b"x" * MAX_RECORD_BYTES
    envelope = make_envelope(3, value)
    # Then the first form tried is the truncated one, marked, with the original's size
    form, encoded = next(fitted(lambda form: dead_letter(envelope, _record(detail="d" * 10_000), form)))
    letter = _strict(encoded)
    assert form == "truncated" and len(encoded) < 100_000
    assert base64.b64decode(letter["value_b64"]) == value[:TRUNCATED_VALUE_BYTES]
    assert (letter["truncated"], letter["value_truncated"], letter["value_bytes"]) == (True, True, len(value))
    assert len(letter["detail"]) <= 4097


def test_the_minimal_form_is_always_offered_last_even_over_the_bound(make_envelope):
    envelope = make_envelope(3, b"x" * 1000)
    forms = list(fitted(lambda form: dead_letter(envelope, _record(), form), limit=10))
    assert [form for form, _ in forms] == ["minimal"]
    letter = _strict(forms[0][1])
    assert (letter["value_b64"], letter["truncated"], letter["reason"]) == ("", True, "invalid_job")


def test_a_result_event_too_large_replaces_its_metadata_by_a_note_of_its_size():
    # Given a verdict whose echoed metadata is larger than a record may be
    record = _record(status="ok", code=None, metadata={"blob": "m" * MAX_RECORD_BYTES})
    # When its event is fitted
    form, encoded = next(fitted(lambda form: verdict_event(record, 41, form)))
    event = _strict(encoded)
    # Then it is the truncated form: the verdict is all there, the metadata is a note with its size
    assert form == "truncated" and event["truncated"] is True
    assert event["metadata"] == {"truncated": True, "bytes": MAX_RECORD_BYTES + len('{"blob": ""}')}
    assert (event["job_id"], event["verdict_id"], event["status"]) == ("job-1", 41, "ok")


def test_an_event_that_fits_keeps_its_metadata_and_says_so():
    event = _strict(verdict_event(_record(status="ok"), 5))
    assert event["metadata"] == {"uploader": "u-1"} and event["truncated"] is False


@pytest.mark.parametrize(
    "changes",
    [
        {"p_fake": float("nan"), "threshold": float("inf")},
        {"detail": "lone \ud800 surrogate, NUL \u0000"},
        {"job_id": "job-\udc80", "media_uri": "file:///m/\udcff.png"},
        {"metadata": {"k": [float("-inf"), "\udfff"], "\ud800": 1}},
    ],
)
def test_records_are_strict_json_whatever_the_verdict_holds(make_envelope, changes):
    # Given a verdict holding NaN, Infinity, NUL or lone surrogates (a bug, or a path the job schema never saw)
    record = _record(**changes)
    # Then its event and dead letter still parse as strict JSON, and its Kafka key is UTF-8
    for encoded in (verdict_event(record, 1), dead_letter(make_envelope(0, b"\xff"), record)):
        assert _strict(encoded)["schema_version"] == 1
    assert record_key(record.job_id).decode()
    assert record_key("job-\udc80").decode() == "job-\ufffd"


def test_a_result_event_keeps_non_finite_scores_as_null():
    event = _strict(verdict_event(_record(status="ok", p_fake=float("nan")), 1))
    assert event["p_fake"] is None
