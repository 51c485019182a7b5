"""The v1 job message: what is accepted, what is refused, and what an invalid message is judged under."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepsift.daemon.stream.jobs import (
    InvalidJob,
    JobV1,
    encode_job,
    invalid_job_id,
    new_job,
    parse_job,
    readable_field,
    readable_job_id,
)

VALID = {
    "schema_version": 1,
    "job_id": "upload-42",
    "media_url": "https://media.example/u/42.mp4",
    "media_type": "video",
    "content_sha256": "AB" * 32,
    "submitted_at": "2025-03-01T12:00:00+01:00",
    "options": {"frames": 16, "masks": True},
    "metadata": {"uploader": "u-1", "tags": ["a"]},
}


def _message(**changes: object) -> bytes:
    document = {**VALID, **changes}
    return json.dumps({k: v for k, v in document.items() if v is not ...}).encode()


def test_a_full_message_is_parsed_and_the_hash_normalised():
    job = parse_job(_message())
    assert (job.job_id, job.media_type, job.options.frames, job.options.masks) == ("upload-42", "video", 16, True)
    assert job.content_sha256 == "ab" * 32
    assert job.metadata == {"uploader": "u-1", "tags": ["a"]}


def test_optional_fields_have_defaults():
    job = parse_job(_message(media_type=..., content_sha256=..., options=..., metadata=...))
    assert (job.media_type, job.content_sha256, job.options.frames, job.metadata) == ("auto", None, None, {})


def test_what_new_job_builds_parses_back_unchanged():
    job = new_job("j-1", "file:///srv/u/a.jpg", frames=4, metadata={"k": 1})
    assert parse_job(encode_job(job)) == job


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"{not json",
        b"[]",
        _message(schema_version=2),
        _message(schema_version="1"),
        _message(job_id=...),
        _message(job_id=""),
        _message(job_id="has space"),
        _message(job_id="x" * 257),
        _message(media_url="ftp://host/a.mp4"),
        _message(media_url="/srv/u/a.mp4"),
        _message(media_type="audio"),
        _message(content_sha256="abc"),
        _message(submitted_at="2025-03-01T12:00:00"),  # no zone: ambiguous
        _message(submitted_at=...),
        _message(options={"frames": 0}),
        _message(options={"frame": 8}),
        _message(unknown_key=1),
    ],
)
def test_invalid_messages_are_refused_with_the_invalid_job_code(message):
    with pytest.raises(InvalidJob) as refused:
        parse_job(message)
    assert refused.value.code == "invalid_job" and refused.value.detail


def test_an_invalid_message_keeps_its_readable_job_id_or_gets_one_from_its_position():
    assert readable_job_id(_message(schema_version=9)) == "upload-42"
    assert readable_job_id(_message(job_id="bad id")) is None
    assert readable_job_id(b"\xff\xfe") is None
    assert invalid_job_id("jobs", 3, 1207) == invalid_job_id("jobs", 3, 1207) == "invalid:jobs:3:1207"


# --- hostile messages: refused at the edge, never an exception other than InvalidJob ----------------------


def _raw(metadata_json: bytes) -> bytes:
    """A message whose metadata is the raw JSON text given (tokens json.dumps would not write)."""
    head = json.dumps({k: v for k, v in VALID.items() if k != "metadata"}).encode()[:-1]
    return head + b', "metadata": ' + metadata_json + b"}"


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (_raw(b'{"a": ' + _nested(100_000) + b"}"), "recursion limit"),  # RecursionError in Python's json
        (_raw(b'{"a": ' + _nested(8) + b"}"), "nested deeper than 8"),  # within the parser's limit, over ours
        (_message(job_id="upload-\ud800"), "hex escape"),  # a lone surrogate escape
        (_message(job_id="upload-42").replace(b"upload-42", b"upload-\xed\xa0\x80"), "unicode"),  # raw surrogate
        (_message(metadata={"k": "a\u0000b"}), "NUL"),
        (_message(metadata={"k\u0000": "v"}), "NUL"),
        (_message(metadata={"deep": [{"s": "\u0000"}]}), "NUL"),
        (_message(media_url="file:///srv/u/a\u0000.mp4"), "control characters"),
        (_message(media_url="https://media.example/u\n/42.mp4"), "control characters"),
        (_message(media_url="https://media.example:99999/42.mp4"), "not a URL"),
        (_message(media_url="https://[::1/42.mp4"), "not a URL"),
        (_raw(b'{"k": NaN}'), "not finite"),
        (_raw(b'{"k": [Infinity]}'), "not finite"),
        (_raw(b'{"k": {"x": -Infinity}}'), "not finite"),
        (_raw(b'{"k": 1e400}'), "not finite"),  # overflows to infinity
        (_message(metadata={"k": "x" * (64 << 10)}), "more than 65536"),
        (_message(metadata={"k": "x" * (1536 << 10)}), "more than 1048576"),  # the message itself
    ],
)
def test_hostile_messages_are_refused_with_a_short_reason(message, reason):
    with pytest.raises(InvalidJob) as refused:
        parse_job(message)
    assert refused.value.code == "invalid_job" and reason in refused.value.detail
    assert len(refused.value.detail) <= 2100


def test_metadata_at_the_bounds_is_accepted_unchanged():
    # Given metadata 8 levels deep (itself the first), under 64 KiB, with non-ASCII text and big finite numbers
    deep: dict = {"v": 1}
    for _ in range(6):
        deep = {"d": deep}
    metadata = {"deep": deep, "text": "é😀" * 100, "big": 10**300, "small": -1.5e-300, "pad": "x" * 60_000}
    # Then it is a valid job whose metadata is echoed as sent
    assert parse_job(_message(metadata=metadata)).metadata == metadata


def test_the_reason_never_echoes_unsafe_or_long_input():
    # Given an unknown key holding NUL, control characters and 10,000 characters
    message = _message(**{"\u0000\u0007" + "k" * 10_000: 1})
    with pytest.raises(InvalidJob) as refused:
        parse_job(message)
    detail = refused.value.detail
    # Then the reason names it, clipped and printable
    assert "Extra inputs are not permitted" in detail
    assert "\u0000" not in detail and "\u0007" not in detail and len(detail) < 500


@pytest.mark.parametrize("metadata", [{"k": float("nan")}, {"k": b"bytes"}, {"k": {1, 2}}, {"k": "\ud800"}])
def test_new_job_refuses_metadata_that_is_not_storable_json(metadata):
    with pytest.raises(ValueError, match="metadata"):
        new_job("j-1", "file:///srv/u/a.jpg", metadata=metadata)


@pytest.mark.parametrize(
    "message",
    [
        _raw(b'{"a": ' + _nested(100_000) + b"}"),
        _nested(1_000_000),
        b'{"job_id": ' + b"[" * 50_000 + b"}",
        _message(job_id="upload-\ud800"),
        b'{"job_id": "upload-\xed\xa0\x80"}',
        b'{"job_id": "\xff\xfe"}',
        b"\xff\xfe",
        None,
        b"",
    ],
)
def test_reading_fields_of_a_hostile_message_never_raises(message):
    assert readable_job_id(message) is None
    assert readable_field(message, "media_url") is None


def test_fields_are_read_only_when_they_pass_their_own_checks():
    # a job id or URL that is there and safe is read, even when NaN sits elsewhere in the message
    nan_elsewhere = _raw(b'{"k": NaN}')
    assert (readable_job_id(nan_elsewhere), readable_field(nan_elsewhere, "media_url")) == (
        "upload-42",
        VALID["media_url"],
    )
    # ids with NUL, a lone surrogate or whitespace, and URLs that cannot be split, are not
    assert readable_job_id(_message(job_id="a\u0000b")) is None
    assert readable_job_id(_message(job_id="a b")) is None
    assert readable_field(_message(media_url="https://h:99999/x", schema_version=2), "media_url") is None
    assert readable_field(_message(media_url="file:///a\u0000b", schema_version=2), "media_url") is None
    assert readable_field(_message(metadata=1), "metadata") is None


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.binary(max_size=512))
def test_any_bytes_are_a_job_or_invalid_job_and_fields_read_safely(value):
    _only_invalid_job(value)
    for found in (readable_job_id(value), readable_field(value, "media_url")):
        assert found is None or (found.encode() and "\u0000" not in found)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=40,
)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(metadata=_JSON, job_id=st.text(max_size=12), media_url=st.text(max_size=20))
def test_any_json_a_job_accepts_can_be_stored_and_sent_as_it_is(metadata, job_id, media_url):
    # Given a message with arbitrary metadata, job id and URL (NaN, NUL and lone surrogates included)
    document = {**VALID, "metadata": metadata, "job_id": job_id, "media_url": "file:///" + media_url}
    job = _only_invalid_job(json.dumps(document).encode())
    # Then whatever is accepted is strict JSON and UTF-8 without NUL, bounded, with an id that reads back
    if job is not None:
        text = json.dumps(job.metadata, allow_nan=False, ensure_ascii=False)
        assert "\u0000" not in text and len(text.encode()) <= 64 << 10
        assert "\u0000" not in job.media_url and job.media_url.encode()
        assert readable_job_id(encode_job(job)) == job.job_id


def _only_invalid_job(value: bytes) -> JobV1 | None:
    try:
        return parse_job(value)
    except InvalidJob:
        return None
