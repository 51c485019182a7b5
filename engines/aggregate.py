"""Frame and face scores → per-track and per-video P(fake), by a selectable rule.

A rule reduces a list of probabilities to one. Each face track is reduced by the rule; then the media's score is
decided (``aggregate``), and the verdict says how (``MediaScore.decision``):

- ``max_of_covered_tracks``: the most suspicious track among the *covered* ones, those seen in at least
  ``max(ceil(min_track_fraction · n), min(2, n))`` of the n frames that have regions. One fake face makes a fake
  video; a detection seen once never decides a video with faces in more than one frame.
- ``coverage_weighted_fallback``: when no track is covered (tracks fragmented, or every face seen once or twice),
  the mean of the track scores weighted by each track's evidence: the sum, over its regions, of the detector's
  confidence times ``min(1, sqrt(box area fraction) / SMALL_FACE_SIDE)`` (1 where unknown). A one-frame detection
  then weighs one region's worth against the many of the faces that fill the video; the decisive track is the one
  that weighs most.

In full-frame mode the whole video is a single track.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from deepsift.engines.registry import Registry

Rule = Callable[[np.ndarray, float | None], float]
RULES: Registry[Rule] = Registry("aggregation rule")


def _no_parameter(rule: str, param: float | None) -> None:
    if param is not None:
        raise ValueError(f"aggregation rule {rule!r} takes no parameter, got {param:g}")


@RULES.register("mean")
def _mean(p: np.ndarray, param: float | None) -> float:
    _no_parameter("mean", param)
    return float(p.mean())


@RULES.register("max")
def _max(p: np.ndarray, param: float | None) -> float:
    _no_parameter("max", param)
    return float(p.max())


@RULES.register("topk")
def _topk_mean(p: np.ndarray, fraction: float | None) -> float:
    """Mean of the top ``fraction`` (default 0.25) of scores: robust to a few bad frames, alert to a fake segment."""
    k = max(1, math.ceil(len(p) * (0.25 if fraction is None else fraction)))
    return float(np.sort(p)[-k:].mean())


@RULES.register("quantile")
def _quantile(p: np.ndarray, q: float | None) -> float:
    return float(np.quantile(p, 0.9 if q is None else q))


@dataclass(frozen=True)
class AggregationRule:
    """A rule name with its optional parameter, written ``name`` or ``name:param`` (e.g. ``topk:0.25``)."""

    name: str
    param: float | None = None

    @classmethod
    def parse(cls, text: str) -> AggregationRule:
        name, _, param = text.partition(":")
        if name not in RULES:
            raise ValueError(f"unknown aggregation rule {name!r}; registered: {', '.join(RULES.names())}")
        value = float(param) if param else None
        if value is not None and not 0.0 < value <= 1.0:
            raise ValueError(f"aggregation parameter must be in (0, 1], got {text!r}")
        rule = cls(name, value)
        rule.reduce([0.0])  # a rule refuses a parameter it does not take
        return rule

    def __str__(self) -> str:
        return self.name if self.param is None else f"{self.name}:{self.param:g}"

    def reduce(self, scores: Sequence[float]) -> float:
        return RULES.get(self.name)(np.asarray(scores, dtype=np.float64), self.param)


MAX_OF_COVERED = "max_of_covered_tracks"
COVERAGE_WEIGHTED = "coverage_weighted_fallback"
DECISIONS = (MAX_OF_COVERED, COVERAGE_WEIGHTED)
# A face box whose side (square root of its share of the frame's area) is under this counts less in the fallback,
# in proportion: detectors misfire most on small patches, and small faces give the engine fewest pixels to judge.
SMALL_FACE_SIDE = 0.05


@dataclass(frozen=True)
class ScoredItem:
    frame_index: int
    p_fake: float
    track_id: int | None = None
    confidence: float | None = None  # the face detector's confidence in the region's face
    area_fraction: float | None = None  # the face box's area over the frame's

    @property
    def weight(self) -> float:
        """The region's evidence in the fallback: detector confidence times a small-face discount."""
        confidence = 1.0 if self.confidence is None else self.confidence
        side = 1.0 if self.area_fraction is None else math.sqrt(max(self.area_fraction, 0.0))
        return max(confidence * min(1.0, side / SMALL_FACE_SIDE), 1e-6)


@dataclass(frozen=True)
class TrackScore:
    track_id: int
    p_fake: float
    n_frames: int
    first_frame: int
    last_frame: int
    coverage: float = 1.0  # frames it is seen in over the frames that have regions
    weight: float = 1.0  # the sum of its regions' ``ScoredItem.weight``


@dataclass(frozen=True)
class MediaScore:
    p_fake: float
    tracks: tuple[TrackScore, ...]
    decisive_track: int
    decision: str = MAX_OF_COVERED  # one of ``DECISIONS``: how the decisive track was chosen


def aggregate(items: Sequence[ScoredItem], rule: AggregationRule, min_track_fraction: float = 0.1) -> MediaScore:
    """Reduce scored frames/faces to tracks, then to the media, by the decision in the module docstring."""
    if not items:
        raise ValueError("nothing to aggregate")
    tracks = _track_scores(items, rule)
    n_frames = len({i.frame_index for i in items})
    needed = max(math.ceil(min_track_fraction * n_frames), min(2, n_frames))
    covered = [t for t in tracks if t.n_frames >= needed]
    if covered:
        decisive = max(covered, key=lambda t: (t.p_fake, t.n_frames, -t.track_id))
        return MediaScore(decisive.p_fake, tracks, decisive.track_id, MAX_OF_COVERED)
    total = sum(t.weight for t in tracks)
    p_fake = sum(t.weight * t.p_fake for t in tracks) / total
    heaviest = max(tracks, key=lambda t: (t.weight, t.p_fake, -t.track_id))
    return MediaScore(p_fake, tracks, heaviest.track_id, COVERAGE_WEIGHTED)


def _track_scores(items: Sequence[ScoredItem], rule: AggregationRule) -> tuple[TrackScore, ...]:
    by_track: dict[int, list[ScoredItem]] = {}
    for item in items:
        by_track.setdefault(item.track_id if item.track_id is not None else 0, []).append(item)
    n_frames = len({i.frame_index for i in items})
    return tuple(
        TrackScore(
            track_id=tid,
            p_fake=rule.reduce([i.p_fake for i in group]),
            n_frames=len({i.frame_index for i in group}),
            first_frame=min(i.frame_index for i in group),
            last_frame=max(i.frame_index for i in group),
            coverage=len({i.frame_index for i in group}) / n_frames,
            weight=sum(i.weight for i in group),
        )
        for tid, group in sorted(by_track.items())
    )
