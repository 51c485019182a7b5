"""The job message, schema version 1: what an upload pipeline puts on the jobs topic.

A message is JSON, validated strictly (unknown keys, wrong types and an unknown ``schema_version``
are refused), so a producer bug surfaces as an ``invalid_job`` error verdict and a dead letter instead
of a silently misread job. A new schema version gets a new model next to this one, never a silent
change to it.

This is the edge every value crosses on its way to SQL, JSON and Kafka, so a hostile message is refused
here rather than failing a later stage: the message is bounded in size, parsed by pydantic's Rust parser
(its nesting limit raises an error, never a ``RecursionError``; it refuses invalid UTF-8 and lone
surrogates), and the metadata echoed into the verdict is bounded in size and depth, holds finite numbers
only and no NUL, which PostgreSQL cannot store in text or JSONB.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import from_json

from deepsift.engines.errors import PermanentError

SCHEMA_VERSION = 1
MEDIA_URL_SCHEMES = ("file", "http", "https")
# Job ids are printable and free of whitespace, so they read well in logs, URLs and SQL.
JOB_ID_PATTERN = r"^[^\s\x00-\x1f\x7f]{1,256}$"
_JOB_ID = re.compile(JOB_ID_PATTERN)
MAX_MEDIA_URL_CHARS = 8192

MAX_JOB_BYTES = 1 << 20  # a larger message is refused before it is parsed
MAX_METADATA_BYTES = 64 << 10  # metadata as compact UTF-8 JSON: echoed into every verdict row and result event
MAX_METADATA_DEPTH = 8  # nested objects and arrays, the metadata object itself being the first
READABLE_MAX_BYTES = 16 << 20  # an invalid message larger than this is not searched for its job id
_DETAIL_CHARS = 2000

_NOT_TEXT = re.compile("[\x00\ud800-\udfff]")  # NUL (PostgreSQL refuses it) and lone surrogates (not encodable)
_CONTROL = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


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
    media_url: str = Field(min_length=1, max_length=MAX_MEDIA_URL_CHARS)
    media_type: Literal["auto", "video", "image"] = "auto"
    content_sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    submitted_at: AwareDatetime
    options: JobOptions = Field(default_factory=JobOptions)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("media_url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        problem = _url_problem(value)
        if problem is not None:
            raise ValueError(problem)
        scheme = urlsplit(value).scheme.lower()
        if scheme not in MEDIA_URL_SCHEMES:
            raise ValueError(f"media_url scheme must be one of {', '.join(MEDIA_URL_SCHEMES)}, not {scheme[:16]!r}")
        return value

    @field_validator("content_sha256")
    @classmethod
    def _lower_hex(cls, value: str | None) -> str | None:
        return None if value is None else value.lower()

    @field_validator("metadata")
    @classmethod
    def _storable_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        problem = _metadata_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value


def _url_problem(url: str) -> str | None:
    """Why ``url`` cannot be handled safely (split, redacted, logged), or None; the scheme is checked apart."""
    if _CONTROL.search(url):
        return "media_url must not contain control characters, NUL or lone surrogates"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError when out of range, as redacting the URL later would
    except ValueError as e:
        return f"media_url is not a URL: {e}"
    return None


def _metadata_problem(metadata: dict[str, Any]) -> str | None:
    """The first reason ``metadata`` cannot be echoed into SQL, JSON and Kafka as it is, or None.

    Walked with an explicit stack, so no nesting can exhaust the interpreter's recursion limit."""
    stack: list[tuple[object, int]] = [(metadata, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list | tuple) and depth > MAX_METADATA_DEPTH:
            return f"nested deeper than {MAX_METADATA_DEPTH} levels"
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str) or _NOT_TEXT.search(key):
                    return "has a key that is not valid Unicode text or holds NUL"
                stack.append((item, depth + 1))
        elif isinstance(value, list | tuple):
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, str):
            if _NOT_TEXT.search(value):
                return "has a string that is not valid Unicode text or holds NUL"
        elif isinstance(value, float):
            if not math.isfinite(value):
                return "has a number that is not finite (NaN or Infinity)"
        elif value is not None and not isinstance(value, int):
            return f"has a {type(value).__name__}, which is not a JSON value"
    size = len(json.dumps(metadata, ensure_ascii=False, separators=(",", ":")).encode())
    if size > MAX_METADATA_BYTES:
        return f"is {size} bytes as JSON, more than {MAX_METADATA_BYTES}"
    return None


def parse_job(value: bytes | None) -> JobV1:
    """The job in a message value; ``InvalidJob`` says why when it is not a valid v1 job."""
    if not value:
        raise InvalidJob("the message has no value")
    if len(value) > MAX_JOB_BYTES:
        raise InvalidJob(f"the message is {len(value)} bytes, more than {MAX_JOB_BYTES}")
    try:
        return JobV1.model_validate_json(value)
    except ValidationError as e:
        raise InvalidJob(_summary(e)) from e
    except RecursionError as e:  # not expected from the Rust parser; kept so no nesting can end a stage
        raise InvalidJob("the message is nested too deeply") from e


def _summary(error: ValidationError) -> str:
    """A short, stable reason: the first few problems with their locations, no input echo.

    Locations can hold the names of unknown keys, so each part is clipped and made printable."""
    problems = [
        f"{'.'.join(_clip(str(p), 64) for p in item['loc']) or 'message'}: {_clip(item['msg'], 300)}"
        for item in error.errors(include_url=False, include_input=False)[:5]
    ]
    more = error.error_count() - len(problems)
    return _clip("; ".join(problems) + (f"; and {more} more" if more > 0 else ""), _DETAIL_CHARS)


def _clip(text: str, limit: int) -> str:
    """``text`` printable (controls, NUL and lone surrogates as U+FFFD) and at most about ``limit`` characters."""
    text = _CONTROL.sub("\ufffd", text)
    return text if len(text) <= limit else text[:limit] + "…"


def _readable_job_id(found: str) -> bool:
    return _JOB_ID.fullmatch(found) is not None


def _readable_media_url(found: str) -> bool:
    return len(found) <= MAX_MEDIA_URL_CHARS and _url_problem(found) is None


# A field of an invalid message is read only when it passes that field's own checks (others: safe text).
_READABLE_CHECKS: dict[str, Callable[[str], bool]] = {"job_id": _readable_job_id, "media_url": _readable_media_url}


def readable_field(value: bytes | None, name: str) -> str | None:
    """A string field of an invalid message, when it can still be read safely (for the error verdict).

    Never raises, whatever the bytes: the Rust parser bounds nesting and refuses invalid Unicode, and a
    string is returned only if it is valid text without NUL that passes the field's own checks."""
    if not value or len(value) > READABLE_MAX_BYTES:
        return None
    try:
        document = from_json(value)  # NaN and Infinity may sit elsewhere; only strings are read
    except Exception:  # any unreadable message simply has no readable field
        return None
    found = document.get(name) if isinstance(document, dict) else None
    if not isinstance(found, str) or not found or _NOT_TEXT.search(found):
        return None
    check = _READABLE_CHECKS.get(name)
    if check is None:
        return found if len(found) <= MAX_MEDIA_URL_CHARS else None
    return found if check(found) else None


def readable_job_id(value: bytes | None) -> str | None:
    """The producer's job id of an invalid message, if it is there, well formed and safely encodable."""
    return readable_field(value, "job_id")


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
