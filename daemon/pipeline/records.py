"""What flows through the stage functions, as frozen records: a job (``MediaJob``), the regions cut from its
frames (``Region``), the job ready for the engine or the verdict it already earned (``PreparedMedia``), and
what judging needs to know (``JudgeConfig``)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from deepsift.daemon.records import FrameHashRecord, NearDuplicateRecord, VerdictRecord
from deepsift.engines.aggregate import AggregationRule
from deepsift.engines.backends import LoadedEngine
from deepsift.engines.budgets import MediaBudget
from deepsift.engines.codes import VerdictCode, check_status
from deepsift.engines.decoders import Decoder, named_decoder
from deepsift.engines.faces import FaceBox
from deepsift.engines.media import MediaFacts


class Outcome(NamedTuple):
    """The verdict a job earned before inference (an error, or an abstention): its status, a code of the closed
    ``VerdictCode`` enumeration, and a detail for people. Build it with ``error`` or ``abstained``, which refuse
    a code that is not one of the enumeration's for that status."""

    status: Literal["error", "abstained"]
    code: VerdictCode
    detail: str

    @classmethod
    def error(cls, code: str, detail: str) -> Outcome:
        return cls("error", check_status(code, "error"), detail)

    @classmethod
    def abstained(cls, code: str, detail: str) -> Outcome:
        return cls("abstained", check_status(code, "abstained"), detail)


@dataclass(frozen=True)
class MediaJob:
    """One piece of media to judge: where it is and what to echo into its verdict."""

    job_id: str
    uri: str
    path: Path | None = None
    data: bytes | None = None
    source: str = "scan"
    known_sha256: str | None = None  # computed by the caller from the same bytes; fetch then skips hashing
    expected_sha256: str | None = None  # what the producer says the content hashes to; fetch checks it
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Region:
    """What one engine input was cut from: a whole frame, or one face in it."""

    frame_index: int
    pts_s: float | None
    face_index: int | None = None
    track_id: int | None = None
    box: FaceBox | None = None


@dataclass(frozen=True)
class PreparedMedia:
    """A job ready for the engine: its regions and their pixels, or the verdict it already earned."""

    job: MediaJob
    media_sha256: str | None
    facts: MediaFacts | None
    frames_sampled: int = 0
    regions: tuple[Region, ...] = ()
    pixels: np.ndarray | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    outcome: Outcome | None = None  # the verdict already earned, when no inference is needed
    decoder: str | None = None  # what decoded the frames (DecodedMedia.decoder)
    decoder_note: str | None = None  # why the preferred decoder was passed over (DecodedMedia.fallback_reason)
    # The engine it was prepared for (by its input contract); that engine scores it and names its verdict.
    engine: LoadedEngine | None = field(default=None, compare=False, repr=False)
    reused: ReusedVerdict | None = None  # an exact re-upload: answered from this verdict, never decoded
    hashes: tuple[FrameHashRecord, ...] = ()  # perceptual hashes of the decoded frames
    near_duplicates: tuple[NearDuplicateRecord, ...] = ()  # earlier verdicts of similar media
    credentials: dict[str, Any] | None = None  # the C2PA manifest's summary, when the media carries one
    # Each shadow engine's input batch (``pipeline.shadow``), in the order of the daemon's shadows; None for one
    # that cuts other regions. The serving batch itself where the contracts agree.
    shadow_pixels: tuple[Any, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class ReusedVerdict:
    """The earlier verdict an exact re-upload is answered from (same bytes, same engine version)."""

    verdict_id: int
    record: VerdictRecord


@dataclass(frozen=True)
class UploadSignals:
    """What prepare records beside the engine's judgement: perceptual hashes of the decoded frames and the
    media's Content Credentials."""

    perceptual_hashes: bool = True
    credentials: bool = True
    trust_anchors: str | None = field(default=None, repr=False)  # PEM roots for a "valid" credentials state


# Bumped when face tracking or the deciding-track rule changes what a verdict of the same bytes would be, so
# re-uploads are not answered from verdicts made under the old rule (2: motion/appearance tracks, covered tracks).
TRACKING_VERSION = 2


@dataclass(frozen=True)
class JudgeConfig:
    frames_per_video: int
    rule: AggregationRule
    min_track_fraction: float
    # Built once at start-up (engines.decoders.open_decoder); the name "pyav" stands for the stateless CPU decoder.
    decoder: Decoder = field(compare=False, repr=False)
    max_media_bytes: int
    masks: bool = False  # store tamper masks, where the engine makes them
    max_masks: int = 8  # masks per verdict: the most suspicious regions
    budget: MediaBudget = field(default_factory=MediaBudget)  # pixel, length and frame-memory limits of one job
    signals: UploadSignals = field(default_factory=UploadSignals)

    @property
    def fingerprint(self) -> str:
        """The sha256 of every setting besides the engine and the bytes that a verdict depends on (sampling,
        aggregation, budgets, masks, credentials and their trust anchors): a re-upload reuses only a verdict made
        under the same. The decoder is left out: it decodes the same frames, where it can."""
        anchors = self.signals.trust_anchors
        settings = {
            "frames_per_video": self.frames_per_video,
            "rule": str(self.rule),
            "min_track_fraction": self.min_track_fraction,
            "max_media_bytes": self.max_media_bytes,
            "masks": self.masks,
            "max_masks": self.max_masks,
            "budget": asdict(self.budget),
            "credentials": self.signals.credentials,
            "trust_anchors": None if anchors is None else hashlib.sha256(anchors.encode()).hexdigest(),
            "tracking": TRACKING_VERSION,
        }
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()

    def __post_init__(self) -> None:
        if isinstance(self.decoder, str):
            object.__setattr__(self, "decoder", named_decoder(self.decoder))
