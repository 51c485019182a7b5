"""Text and JSON as both databases (and Kafka's JSON events) store them.

Every text and JSON value the daemon stores or sends is made storable here, whatever path it came by (the job
schema refuses such values, but ``daemon scan`` of a file whose name is not UTF-8, or an exception's message,
can carry them): NUL and lone surrogates become U+FFFD, non-finite numbers in JSON become null, identically on
SQLite and PostgreSQL. PostgreSQL refuses NUL in text and JSONB and NaN in JSONB; neither database can encode a
surrogate.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping
from typing import Any

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT_CHARACTER = "\ufffd"
MAX_JSON_DEPTH = 64  # deeper JSON is cut to null: the JSON encoders recurse


def safe_text(value: str) -> str:
    """``value`` as both databases store it: NUL and lone surrogates become U+FFFD (a surrogate pair, such as
    ``surrogatepass`` decoding leaves, becomes its character)."""
    if not _UNSTORABLE.search(value):
        return value
    joined = value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return joined.replace("\x00", REPLACEMENT_CHARACTER)


def safe_json(value: Any, depth: int = 0) -> Any:
    """``value`` as strict JSON both databases store: safe text, finite numbers (else null), string keys,
    bounded depth; a value JSON has no type for becomes its text."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        return number if math.isfinite(number) else None
    if depth >= MAX_JSON_DEPTH:
        return None
    if isinstance(value, Mapping):
        return {safe_text(str(key)): safe_json(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [safe_json(item, depth + 1) for item in value]
    return safe_text(str(value))


def storable(value: Any) -> Any:
    """A plain column's value made safe: text columns through ``safe_text``, JSON columns through ``safe_json``."""
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, Mapping):
        return safe_json(value)
    return value
