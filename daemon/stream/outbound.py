"""Records the daemon produces: dead letters (the original message and why it failed) and result events.

Both are JSON, keyed by the job id, with a ``schema_version`` of their own. A dead letter carries the
original key and value base64-encoded byte for byte, so it can be inspected or replayed onto the jobs
topic after a fix.

Each record can be built in three forms, and the first that the broker takes is produced: ``full``;
``truncated`` (the original value cut to 64 KiB, the metadata replaced by a note of its size, long
texts clipped); ``minimal`` (no original bytes, no metadata: what failed and where). Any form but the
full one says ``"truncated": true``. Every value is strict JSON: non-finite numbers become null and
text that is not valid Unicode is repaired, so any consumer can parse what it reads.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, Literal

from deepsift.daemon.records import VerdictRecord
from deepsift.daemon.storable import safe_json, safe_text
from deepsift.daemon.stream.work import Envelope

DEAD_LETTER_SCHEMA_VERSION = 1
VERDICT_EVENT_SCHEMA_VERSION = 1

Form = Literal["full", "truncated", "minimal"]
FORMS: tuple[Form, ...] = ("full", "truncated", "minimal")
# Larger records are not even tried: the producer refuses more than max_request_size (1 MiB by default) and
# brokers default to message.max.bytes of about 1 MB; this leaves room for the key and the batch framing.
MAX_RECORD_BYTES = 1_000_000
TRUNCATED_VALUE_BYTES = 64 << 10  # of an original message, kept in a truncated dead letter
TRUNCATED_KEY_BYTES = 1 << 10
_TEXT_CHARS: dict[Form, int | None] = {"full": None, "truncated": 4096, "minimal": 256}  # detail, media_uri


def dead_letter(envelope: Envelope, record: VerdictRecord, form: Form = "full") -> bytes:
    """The dead-letter value for a message whose job ended in an error verdict."""
    value, key = envelope.value or b"", envelope.key
    kept_value = _kept(value, form, TRUNCATED_VALUE_BYTES)
    kept_key = None if key is None else _kept(key, form, TRUNCATED_KEY_BYTES)
    ticket = envelope.ticket
    document: dict[str, Any] = {
        "schema_version": DEAD_LETTER_SCHEMA_VERSION,
        "reason": record.code,
        "detail": _clip(record.detail, form),
        "job_id": record.job_id,
        "topic": ticket.topic,
        "partition": ticket.partition,
        "offset": ticket.offset,
        "timestamp_ms": envelope.timestamp_ms,
        "key_b64": None if kept_key is None else base64.b64encode(kept_key).decode(),
        "key_truncated": kept_key is not None and key is not None and len(kept_key) < len(key),
        "value_b64": base64.b64encode(kept_value).decode(),
        "value_truncated": len(kept_value) < len(value),
        "value_bytes": len(value),
        "engine": {"name": record.engine.name, "version": record.engine.version},
        "dead_lettered_at": _now(),
        "truncated": form != "full",
    }
    return encode(document)


def verdict_event(record: VerdictRecord, verdict_id: int, form: Form = "full") -> bytes:
    """The result event after a verdict is committed in SQL (at least once per job and engine)."""
    document = {
        "schema_version": VERDICT_EVENT_SCHEMA_VERSION,
        "job_id": record.job_id,
        "verdict_id": verdict_id,
        "status": record.status,
        "label": record.label,
        "p_fake": record.p_fake,
        "threshold": record.threshold,
        "code": record.code,
        "detail": _clip(record.detail, form),
        "media_uri": _clip(record.media_uri, form),
        "media_sha256": record.media_sha256,
        "media_type": record.media_type,
        "engine": {"name": record.engine.name, "version": record.engine.version},
        "reused_from": record.reused_from,  # an exact re-upload: the verdict whose judgement it repeats
        "near_duplicates": [link.earlier_verdict_id for link in record.near_duplicates],
        "metadata": record.metadata if form == "full" else {"truncated": True, "bytes": _json_bytes(record.metadata)},
        "committed_at": _now(),
        "truncated": form != "full",
    }
    return encode(document)


def fitted(build: Callable[[Form], bytes], limit: int = MAX_RECORD_BYTES) -> Iterator[tuple[Form, bytes]]:
    """The forms of a record to try in turn, most complete first, skipping those over ``limit``.

    The minimal form always comes last, whatever its size: it is the best there is. Built lazily, so a
    record that fits whole is encoded once."""
    for form in FORMS:
        value = build(form)
        if len(value) <= limit or form == FORMS[-1]:
            yield form, value


def record_key(job_id: str) -> bytes:
    """The Kafka key for a job's records: its id as UTF-8, repaired if it is not valid Unicode."""
    return safe_text(job_id).encode()


def encode(document: dict[str, Any]) -> bytes:
    """Strict, compact-enough JSON of ``document`` whatever it holds (see ``daemon.repository.safe_json``)."""
    return json.dumps(safe_json(document), allow_nan=False).encode()


def _kept(data: bytes, form: Form, truncated_bytes: int) -> bytes:
    if form == "full":
        return data
    return data[:truncated_bytes] if form == "truncated" else b""


def _clip(text: str | None, form: Form) -> str | None:
    limit = _TEXT_CHARS[form]
    if text is None or limit is None or len(text) <= limit:
        return text
    return text[:limit] + "…"


def _json_bytes(value: Any) -> int:
    return len(json.dumps(safe_json(value)).encode())


def _now() -> str:
    return datetime.now(UTC).isoformat()
