"""The verdict as the pipeline hands it to persistence: frozen records, no database types.

A ``VerdictRecord`` is one judgement of one piece of media by one engine. Its children are the
per-frame (or per-face) scores, the per-track summaries and any masks; its ``code`` is one of
``engines.codes.VerdictCode``. ``daemon.repository`` turns it into rows; nothing else in the daemon
knows about SQL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from deepsift.engines.codes import check_status, verdict_code

VerdictStatus = Literal["ok", "abstained", "error"]
UNDECIDED_LABELS = (None, "uncertain")  # labels of an ok verdict that decide neither fake nor real


@dataclass(frozen=True)
class EngineIdentity:
    name: str
    version: int
    artifact_sha256: str


@dataclass(frozen=True)
class FrameScoreRecord:
    """Score of one sampled frame (full-frame mode) or one face in it (face mode)."""

    frame_index: int
    p_fake: float
    pts_s: float | None = None
    face_index: int | None = None
    track_id: int | None = None
    box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1 in source pixels
    face_confidence: float | None = None


@dataclass(frozen=True)
class TrackSummaryRecord:
    track_id: int
    n_frames: int
    p_fake: float
    first_frame: int
    last_frame: int


@dataclass(frozen=True)
class MaskRecord:
    frame_index: int
    png: bytes
    width: int
    height: int
    track_id: int | None = None


@dataclass(frozen=True)
class FrameHashRecord:
    """The 64-bit perceptual hash (unsigned) of one judged image or sampled frame."""

    frame_index: int
    phash: int


@dataclass(frozen=True)
class NearDuplicateRecord:
    """An earlier verdict of perceptually similar media: its id, the smallest Hamming distance between the two
    media's frame hashes, and how many of this media's hashed frames found a match."""

    earlier_verdict_id: int
    distance: int
    matching_frames: int
    frames_compared: int


@dataclass(frozen=True)
class VerdictRecord:
    job_id: str
    source: str  # "scan" | "kafka"
    media_uri: str
    status: VerdictStatus
    engine: EngineIdentity
    media_sha256: str | None = None
    media_type: str | None = None  # "video" | "image"
    label: str | None = None  # "real" | "fake" | a multi-class engine's class | "uncertain", when status == "ok"
    p_fake: float | None = None
    class_probs: dict[str, float] | None = None
    threshold: float | None = None
    code: str | None = None  # a VerdictCode of this status, e.g. "no_face" (abstained), "corrupt_media" (error)
    detail: str | None = None
    aggregation: str | None = None
    frames_requested: int | None = None
    frames_sampled: int | None = None
    # media facts
    container: str | None = None
    codec: str | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    duration_s: float | None = None
    size_bytes: int | None = None
    # stage timings (fetch, decode, faces, infer, …) and, from submitted_at: queue_wait (until the daemon took the
    # job) and total (until its verdict was ready to store)
    timings_ms: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    decoder: str | None = None  # "pyav" | "dali": what decoded the frames
    decoder_note: str | None = None  # why DALI was passed over (variable_frame_rate, …); downscaled:<scale>
    created_at: datetime | None = None  # set by the database when None
    reused_from: int | None = None  # the verdict an exact re-upload took its judgement from (no decode, no engine)
    judged_with: str | None = None  # JudgeConfig.fingerprint: the settings it was judged under (reuse matches it)
    content_credentials: dict[str, Any] | None = None  # the C2PA manifest's summary (engines.provenance)
    role: str = "serving"  # "shadow": a shadow engine's verdict of the job, never announced (VERDICT_ROLES)
    decisive_track_id: int | None = None  # the track that decided P(fake) (engines.aggregate.MediaScore)
    decision: str | None = None  # how it was chosen: engines.aggregate.DECISIONS, e.g. "max_of_covered_tracks"
    # the fake's class for a multi-class engine (its label, e.g. "synthetic"); None for binary engines and reals
    manipulation: str | None = None
    submitted_at: datetime | None = None  # when the job was submitted: its Kafka record's time; a scan's start
    min_track_fraction: float | None = None  # the aggregation rule's parameter (JudgeConfig.min_track_fraction)
    masks_requested: bool | None = None  # masks were asked for (the daemon's setting or the job's option)
    frames: tuple[FrameScoreRecord, ...] = ()
    tracks: tuple[TrackSummaryRecord, ...] = ()
    masks: tuple[MaskRecord, ...] = ()
    hashes: tuple[FrameHashRecord, ...] = ()
    near_duplicates: tuple[NearDuplicateRecord, ...] = ()

    @property
    def is_fake(self) -> bool | None:
        """The verdict's decision: True for a fake (``fake`` or a multi-class engine's manipulation class), False
        for ``real``; None when it decides nothing (``abstained``, ``error``, ``uncertain``)."""
        return fake_decision(self.status, self.label)

    def __post_init__(self) -> None:
        """Refuse a code outside ``engines.codes.VerdictCode`` (the set is closed, so a dashboard can list every
        code), and on an abstained or error verdict one of the other status. Rows read back pass through here too;
        codes are never removed, so they load. A role other than serving or shadow is refused too."""
        if self.role not in ("serving", "shadow"):
            raise ValueError(f"a verdict's role is serving or shadow, not {self.role!r}")
        if self.manipulation is not None and (not self.is_fake or self.manipulation != self.label):
            raise ValueError(f"only a fake has a manipulation class, its label, not {self.manipulation!r}")
        if self.code is None:
            return
        if self.status in ("abstained", "error"):
            check_status(self.code, self.status)
        else:
            verdict_code(self.code)


def fake_decision(status: str, label: str | None) -> bool | None:
    """``verdicts.is_fake`` from a verdict's status and label (migration 0008 backfills old rows by the same rule)."""
    if status != "ok" or label in UNDECIDED_LABELS:
        return None
    return label != "real"
