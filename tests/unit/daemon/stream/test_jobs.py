"""The v1 job message: what is accepted, what is refused, and what an invalid message is judged under."""

from __future__ import annotations

import json

import pytest

from daemon.stream.jobs import InvalidJob, encode_job, invalid_job_id, new_job, parse_job, readable_job_id

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
