"""The job message, schema version 1: what an upload pipeline puts on the jobs topic.

A message is JSON, validated strictly (unknown keys, wrong types and an unknown ``schema_version``
are refused), so a producer bug surfaces as an ``invalid_job`` error verdict and a dead letter instead
of a silently misread job. A new schema version gets a new model next to this one, never a silent
change to it.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from engines.errors import PermanentError

SCHEMA_VERSION = 1
MEDIA_URL_SCHEMES = ("file", "http", "https")
# Job ids are printable and free of whitespace, so they read well in logs, URLs and SQL.
JOB_ID_PATTERN = r"^[^\s\x00-\x1f\x7f]{1,256}$"
_JOB_ID = re.compile(JOB_ID_PATTERN)


class InvalidJob(PermanentError):
    """The message is not a valid v1 job; it is answered with an error verdict and a dead letter."""

    def __init__(self, detail: str) -> None:
        super().__init__("invalid_job", detail)


class JobOptions(BaseModel):
    """Per-job overrides: frames to sample (else the daemon's ``frames_per_video``) and masks wanted."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    frames: int | None = Field(default=None, ge=1, le=1024)
    masks: bool = False


class JobV1(BaseModel):
    """One upload to judge. ``job_id`` is the producer's; a re-sent job is judged once per engine."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    schema_version: Literal[1]
    job_id: str = Field(pattern=JOB_ID_PATTERN)
    media_url: str = Field(min_length=1, max_length=8192)
    media_type: Literal["auto", "video", "image"] = "auto"
    content_sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    submitted_at: AwareDatetime
    options: JobOptions = Field(default_factory=JobOptions)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("media_url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        scheme = urlsplit(value).scheme.lower()
        if scheme not in MEDIA_URL_SCHEMES:
            raise ValueError(f"media_url scheme must be one of {', '.join(MEDIA_URL_SCHEMES)}, not {scheme!r}")
        return value

    @field_validator("content_sha256")
    @classmethod
    def _lower_hex(cls, value: str | None) -> str | None:
        return None if value is None else value.lower()


def parse_job(value: bytes | None) -> JobV1:
    """The job in a message value; ``InvalidJob`` says why when it is not a valid v1 job."""
    if not value:
        raise InvalidJob("the message has no value")
    try:
        return JobV1.model_validate_json(value)
    except ValidationError as e:
        raise InvalidJob(_summary(e)) from e


def _summary(error: ValidationError) -> str:
    """A short, stable reason: the first few problems with their locations, no input echo."""
    problems = [f"{'.'.join(str(p) for p in item['loc']) or 'message'}: {item['msg']}" for item in error.errors()[:5]]
    more = error.error_count() - len(problems)
    return "; ".join(problems) + (f"; and {more} more" if more > 0 else "")


def readable_field(value: bytes | None, name: str) -> str | None:
    """A string field of an invalid message, when it can still be read (for the error verdict)."""
    try:
        document = json.loads(value or b"")
    except (ValueError, UnicodeDecodeError):
        return None
    found = document.get(name) if isinstance(document, dict) else None
    return found if isinstance(found, str) and found else None


def readable_job_id(value: bytes | None) -> str | None:
    """The producer's job id of an invalid message, if it is there and well formed."""
    found = readable_field(value, "job_id")
    return found if found is not None and _JOB_ID.fullmatch(found) else None


def invalid_job_id(topic: str, partition: int, offset: int) -> str:
    """A deterministic id for a message whose own id is unreadable: re-delivery maps to the same verdict."""
    return f"invalid:{topic}:{partition}:{offset}"


def new_job(
    job_id: str,
    media_url: str,
    *,
    media_type: Literal["auto", "video", "image"] = "auto",
    content_sha256: str | None = None,
    frames: int | None = None,
    masks: bool = False,
    metadata: dict[str, Any] | None = None,
    submitted_at: datetime | None = None,
) -> JobV1:
    """A valid v1 job, as ``daemon submit`` and the tests produce it."""
    return JobV1(
        schema_version=SCHEMA_VERSION,
        job_id=job_id,
        media_url=media_url,
        media_type=media_type,
        content_sha256=content_sha256,
        submitted_at=submitted_at or datetime.now(UTC),
        options=JobOptions(frames=frames, masks=masks),
        metadata=metadata or {},
    )


def encode_job(job: JobV1) -> bytes:
    """The message value for ``job``; ``parse_job`` reads it back unchanged."""
    return job.model_dump_json().encode()
