"""Records the daemon produces: dead letters (the original message and why it failed) and result events.

Both are JSON, keyed by the job id, with a ``schema_version`` of their own. A dead letter carries the
original key and value base64-encoded byte for byte, so it can be inspected or replayed onto the jobs
topic after a fix.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

from daemon.records import VerdictRecord
from daemon.stream.work import Envelope

DEAD_LETTER_SCHEMA_VERSION = 1
VERDICT_EVENT_SCHEMA_VERSION = 1
TRUNCATED_VALUE_BYTES = 64 << 10  # kept of an original too large to fit a dead letter whole


def dead_letter(envelope: Envelope, record: VerdictRecord, truncate: bool = False) -> bytes:
    """The dead-letter value for a message whose job ended in an error verdict."""
    value = envelope.value or b""
    kept = value[:TRUNCATED_VALUE_BYTES] if truncate else value
    ticket = envelope.ticket
    document: dict[str, Any] = {
        "schema_version": DEAD_LETTER_SCHEMA_VERSION,
        "reason": record.code,
        "detail": record.detail,
        "job_id": record.job_id,
        "topic": ticket.topic,
        "partition": ticket.partition,
        "offset": ticket.offset,
        "timestamp_ms": envelope.timestamp_ms,
        "key_b64": None if envelope.key is None else base64.b64encode(envelope.key).decode(),
        "value_b64": base64.b64encode(kept).decode(),
        "value_truncated": len(kept) < len(value),
        "value_bytes": len(value),
        "engine": {"name": record.engine.name, "version": record.engine.version},
        "dead_lettered_at": _now(),
    }
    return json.dumps(document).encode()


def verdict_event(record: VerdictRecord, verdict_id: int) -> bytes:
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
        "detail": record.detail,
        "media_uri": record.media_uri,
        "media_sha256": record.media_sha256,
        "media_type": record.media_type,
        "engine": {"name": record.engine.name, "version": record.engine.version},
        "metadata": record.metadata,
        "committed_at": _now(),
    }
    return json.dumps(document).encode()


def _now() -> str:
    return datetime.now(UTC).isoformat()
