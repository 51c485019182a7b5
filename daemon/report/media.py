"""Frames for a report, re-read from the media a verdict judged, when it is still there and still the same.

Only local files are re-read: a scanned path, or a ``file://`` job URL that the daemon's own guards
(``pipeline.fetch.local_path``: under ``media_roots``, no ``..``, no symlink out) still accept. An
``http(s)`` URL is never fetched again: a report page must not make the daemon download. A file whose sha256
is no longer the verdict's is not shown either (it is not the media that was judged). In every such case the
page says why, and shows what SQL holds.

The sampled frame indices are recomputed the way the decoder chose them (the same ``n`` evenly spaced frames of
the same file), and decoded within ``REPORT_FRAME_BUDGET_BYTES``, so a report of a 4K video holds small frames.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np

from deepsift.daemon.pipeline.fetch import MediaRoot, local_path
from deepsift.daemon.records import VerdictRecord
from deepsift.engines.budgets import MediaBudget
from deepsift.engines.errors import DeepsiftError
from deepsift.engines.manifest import sha256_file
from deepsift.engines.media import decode_sampled

REPORT_FRAME_BUDGET_BYTES = 96 << 20  # all sampled frames of one report, as RGB: 32 frames of 1080p come at ~0.7x


@dataclass(frozen=True)
class MediaAccess:
    """Which local media a report may re-read: scanned paths always, ``file://`` job media under ``roots``."""

    roots: tuple[MediaRoot, ...] = ()

    @classmethod
    def of(cls, media_roots: Sequence[Path]) -> MediaAccess:
        return cls(tuple(MediaRoot.of(root) for root in media_roots))


@dataclass(frozen=True)
class ReportFrames:
    """The frames re-read for a report, by sampled frame index (possibly downscaled); or why there are none."""

    frames: dict[int, np.ndarray] = field(default_factory=dict)
    note: str | None = None  # why frames are missing: media gone, changed, remote, not decodable

    @property
    def available(self) -> bool:
        return bool(self.frames)


def read_frames(
    record: VerdictRecord, wanted: Collection[int] | None, access: MediaAccess, first: int = 4
) -> ReportFrames:
    """The frames ``wanted`` (sampled frame indices) of the verdict's media, or an empty set and the reason;
    ``wanted=None``: the ``first`` sampled frames (a verdict that scored none, such as ``no_face``)."""
    path, note = _local_media(record, access)
    if path is None:
        return ReportFrames(note=note)
    if record.media_sha256 is not None:
        try:
            digest = sha256_file(path)
        except OSError as e:
            return ReportFrames(note=f"the media at {path} cannot be read now: {e.strerror or e}")
        if digest != record.media_sha256:
            return ReportFrames(note=f"the file at {path} has changed since the verdict (its sha256 differs)")
    budget = MediaBudget(frame_budget_bytes=REPORT_FRAME_BUDGET_BYTES)
    try:
        decoded = decode_sampled(path, max(record.frames_requested or 1, 1), budget=budget)
    except (DeepsiftError, OSError, MemoryError) as e:
        return ReportFrames(note=f"the media could not be decoded again: {e}")
    kept = decoded.frames[:first] if wanted is None else [f for f in decoded.frames if f.index in wanted]
    frames = {f.index: np.asarray(f.rgb) for f in kept}
    if not frames:
        return ReportFrames(note="decoding the media again gave none of the verdict's frames")
    return ReportFrames(frames)


def _local_media(record: VerdictRecord, access: MediaAccess) -> tuple[Path | None, str | None]:
    uri = record.media_uri
    scheme = urlsplit(uri).scheme.lower()
    if scheme in ("http", "https"):
        return None, "the media was downloaded from a URL; reports do not fetch it again"
    if scheme != "file":
        return None, f"the media URI {uri!r} names no local file"
    if record.source == "scan":  # the operator's own scan: the path as scanned
        path = Path(unquote(urlsplit(uri).path))
        if not path.is_file():
            return None, f"the media is no longer at {path}"
        return path, None
    try:
        return local_path(uri, access.roots), None
    except DeepsiftError as e:  # gone, or outside the media roots this process may read
        return None, f"the media cannot be re-read: {e}"
