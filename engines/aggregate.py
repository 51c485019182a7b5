"""Frame and face scores → per-track and per-video P(fake), by a selectable rule.

A rule reduces a list of probabilities to one. Each face track is reduced by the rule; the video takes
the most suspicious track among those seen in enough frames (one fake face makes a fake video, a
one-frame spurious detection does not). In full-frame mode the whole video is a single track.
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


@dataclass(frozen=True)
class ScoredItem:
    frame_index: int
    p_fake: float
    track_id: int | None = None


@dataclass(frozen=True)
class TrackScore:
    track_id: int
    p_fake: float
    n_frames: int
    first_frame: int
    last_frame: int


@dataclass(frozen=True)
class MediaScore:
    p_fake: float
    tracks: tuple[TrackScore, ...]
    decisive_track: int


def aggregate(items: Sequence[ScoredItem], rule: AggregationRule, min_track_fraction: float = 0.1) -> MediaScore:
    """Reduce scored frames/faces to tracks, then to the media: the highest track among well-observed ones."""
    if not items:
        raise ValueError("nothing to aggregate")
    by_track: dict[int, list[ScoredItem]] = {}
    for item in items:
        by_track.setdefault(item.track_id if item.track_id is not None else 0, []).append(item)
    tracks = tuple(
        TrackScore(
            track_id=tid,
            p_fake=rule.reduce([i.p_fake for i in group]),
            n_frames=len({i.frame_index for i in group}),
            first_frame=min(i.frame_index for i in group),
            last_frame=max(i.frame_index for i in group),
        )
        for tid, group in sorted(by_track.items())
    )
    n_frames = len({i.frame_index for i in items})
    enough = [t for t in tracks if t.n_frames >= max(1, math.ceil(min_track_fraction * n_frames))] or list(tracks)
    decisive = max(enough, key=lambda t: t.p_fake)
    return MediaScore(p_fake=decisive.p_fake, tracks=tracks, decisive_track=decisive.track_id)
