"""The credentials stage: the summary of a C2PA manifest the media carries (``engines.provenance``), stored with
its verdict as a signal beside P(fake). It never fails a job: a malformed manifest is a recorded state, and a
failure of the reader itself is logged and leaves the verdict without credentials."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog

from deepsift.engines.provenance import read_credentials

log = structlog.get_logger(__name__)


def content_credentials(media: Path | bytes, trust_anchors: str | None = None) -> dict[str, Any] | None:
    """The JSON summary of the media's Content Credentials; None when it carries none. ``trust_anchors``: the PEM
    roots a signer must chain to for the ``valid`` state (without them a good signature is ``untrusted``)."""
    try:
        credentials = read_credentials(media, trust_anchors=trust_anchors)
    except Exception:  # a bug or a library failure: the verdict goes on without the signal
        log.exception("credentials_unreadable")
        return None
    return None if credentials is None else credentials.as_json()
