"""Face tracks across sparse samples: faces linked frame to frame by where they head and how they look, then
track pieces split by an absence joined again by their look.

With 32 frames sampled from a long video a face moves far between two samples and boxes seldom overlap, so a
track is followed by motion-tolerant geometry and appearance, not by overlap. ``assign_tracks`` works in two passes:

1. **Frame to frame.** Each sampled frame's faces are assigned to the live tracks by the cheapest joint assignment
   (scipy's ``linear_sum_assignment``), each face and track at most once; a face no track admits starts a track.
   A track stays live while it is missed at most ``MAX_TRACK_GAP`` samples in a row. ``link_cost`` prices a link
   and gates it:

   - distance from the face's centre to where the track is expected (its last centre moved on by its velocity
     over the time between), in face sizes (the geometric mean of the two boxes' ``sqrt(w·h)``), at most
     ``GATE_NEAR + FACE_SPEED·Δt``, never more than ``GATE_FAR`` (Δt in seconds, from the frames' timestamps;
     ``UNKNOWN_STEP_S`` per sample without them);
   - size changed at most ``MAX_SIZE_STEP``×;
   - where both have an appearance, at least ``MIN_SIMILARITY`` alike: two faces that cross keep their tracks.

   Cost: distance/gate + |ln size ratio|/ln ``MAX_SIZE_STEP`` + (1 − similarity).
2. **Re-identification.** A track that ended (a face that left the frame and came back, anywhere, or jumped further
   than the gate) is continued by a later track that starts at most ``REID_MAX_GAP`` samples after its last face,
   when their mean appearances are at least ``REID_SIMILARITY`` alike and their sizes within ``REID_SIZE_RATIO``×;
   tracks are taken in order of their first face, each continued at most once, by the most alike. Comparing whole
   tracks, not single faces, lets a half-visible face at the frame's edge rejoin its track.

Appearance (``engines.faces.appearance``) is a unit vector; similarity is the dot product of two, their
correlation (−1..1). A live track's appearance is a running mean of its faces' (``LOOK_UPDATE``), its velocity the
mean of its last two steps. Ids count up from 0 in order of first sighting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from deepsift.engines.faces import FaceBox

Look = np.ndarray  # an appearance: a unit vector (``unit_look``)

MAX_TRACK_GAP = 2  # samples a track may miss and still be linked by where it is heading
REID_MAX_GAP = 8  # samples an ended track waits to be continued by a track that looks like it (a quarter of 32)
GATE_NEAR = 1.0  # face sizes a face may stray from where its track is expected, however close the samples
FACE_SPEED = 3.0  # and face sizes per second between them (a walking person moves up to ~8; velocity helps)
GATE_FAR = 5.0  # and never further: beyond it only re-identification links
MAX_SIZE_STEP = 1.6  # size ratio between two faces linked by geometry (a zoom, a step towards the camera)
# Appearance correlation of two faces: the same face in two samples 0.7–1.0 (half out of frame at worst), two
# people 0.2–0.45 (measured on the generated clips of tests/unit/engines/test_tracking.py).
MIN_SIMILARITY = 0.5  # a link by geometry needs at least this
REID_SIMILARITY = 0.75  # and re-identification, over whole tracks, this
REID_SIZE_RATIO = 2.0
LOOK_UPDATE = 0.3  # weight of a new face in its track's running appearance
UNKNOWN_STEP_S = 1.0  # seconds between samples when frames carry no timestamps
_BLOCKED = 1e9  # a finite stand-in for "not admitted", which linear_sum_assignment needs


@dataclass
class TrackState:
    """A live track as the association sees it: its last face and when, how it moves and looks, how long missed."""

    track_id: int
    box: FaceBox
    time_s: float
    velocity: tuple[float, float] | None = None  # of the box centre, pixels per second
    look: Look | None = None  # running appearance
    missed: int = 0  # samples in a row without it


def unit_look(pixels: np.ndarray) -> Look | None:
    """Pixels as an appearance: less their mean, at unit length; None for a flat patch (no look to tell)."""
    vector = np.asarray(pixels, np.float64).ravel()
    vector = vector - vector.mean()
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 1e-6 * max(1, vector.size) else None


def link_cost(track: TrackState, box: FaceBox, look: Look | None, time_s: float) -> float:
    """What linking ``box`` (seen at ``time_s``, looking like ``look``) to ``track`` costs; ``inf`` when a gate
    refuses it (the rule is in the module docstring)."""
    size_step = abs(math.log(_size(box) / _size(track.box)))
    similarity = None if look is None or track.look is None else float(track.look @ look)
    if track.missed > MAX_TRACK_GAP or size_step > math.log(MAX_SIZE_STEP):
        return math.inf
    if similarity is not None and similarity < MIN_SIMILARITY:
        return math.inf
    dt = max(time_s - track.time_s, 0.0)
    gate = min(GATE_FAR, GATE_NEAR + FACE_SPEED * dt)
    distance = _distance(track, box, dt)
    if distance > gate:
        return math.inf
    return distance / gate + size_step / math.log(MAX_SIZE_STEP) + (0.0 if similarity is None else 1.0 - similarity)


def _size(box: FaceBox) -> float:
    return math.sqrt(max(box.width, 1e-6) * max(box.height, 1e-6))


def _centre(box: FaceBox) -> tuple[float, float]:
    return (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2


def _distance(track: TrackState, box: FaceBox, dt: float) -> float:
    """From the face's centre to where the track is expected, in face sizes."""
    (tx, ty), (x, y) = _centre(track.box), _centre(box)
    if track.velocity is not None:
        tx, ty = tx + track.velocity[0] * dt, ty + track.velocity[1] * dt
    return math.hypot(x - tx, y - ty) / math.sqrt(_size(track.box) * _size(box))


def assign_tracks(
    boxes_per_frame: Sequence[Sequence[FaceBox]],
    times_s: Sequence[float] | None = None,
    looks_per_frame: Sequence[Sequence[Look | None]] | None = None,
) -> list[list[int]]:
    """A track id for every box (the rule is in the module docstring). ``times_s``: each frame's time (its pts);
    ``looks_per_frame``: each box's appearance, where known."""
    if times_s is None:
        times_s = [k * UNKNOWN_STEP_S for k in range(len(boxes_per_frame))]
    if looks_per_frame is None:
        looks_per_frame = [[None] * len(boxes) for boxes in boxes_per_frame]
    tracker = _Tracker()
    pieces = [
        tracker.step(boxes, looks, time_s)
        for boxes, looks, time_s in zip(boxes_per_frame, looks_per_frame, times_s, strict=True)
    ]
    return _reidentified(pieces, boxes_per_frame, looks_per_frame)


class _Tracker:
    """The frame-to-frame pass: live tracks, and the next id to give."""

    def __init__(self) -> None:
        self.tracks: list[TrackState] = []
        self.next_id = 0

    def step(self, boxes: Sequence[FaceBox], looks: Sequence[Look | None], time_s: float) -> list[int]:
        """Link one frame's faces, start tracks for the rest, and end the tracks missed too long."""
        matches = self._matches(boxes, looks, time_s)
        ids = []
        for b, (box, look) in enumerate(zip(boxes, looks, strict=True)):
            track = matches.get(b)
            if track is None:
                track = TrackState(self.next_id, box, time_s, look=look)
                self.next_id += 1
                self.tracks.append(track)
            else:
                _update(track, box, look, time_s)
            ids.append(track.track_id)
        for track in self.tracks:
            track.missed = 0 if track.track_id in ids else track.missed + 1
        self.tracks = [track for track in self.tracks if track.missed <= MAX_TRACK_GAP]
        return ids

    def _matches(self, boxes: Sequence[FaceBox], looks: Sequence[Look | None], time_s: float) -> dict[int, TrackState]:
        """Box position -> track, the cheapest admitted assignment."""
        if not self.tracks or not boxes:
            return {}
        from scipy.optimize import linear_sum_assignment

        cost = np.array(
            [
                [link_cost(track, box, look, time_s) for box, look in zip(boxes, looks, strict=True)]
                for track in self.tracks
            ]
        )
        rows, cols = linear_sum_assignment(np.where(np.isfinite(cost), cost, _BLOCKED))
        return {int(c): self.tracks[r] for r, c in zip(rows, cols, strict=True) if np.isfinite(cost[r, c])}


def _update(track: TrackState, box: FaceBox, look: Look | None, time_s: float) -> None:
    """The track after its new face: the mean of its last two steps as velocity, a running look."""
    dt = time_s - track.time_s
    if dt > 0:
        (x0, y0), (x1, y1) = _centre(track.box), _centre(box)
        step = ((x1 - x0) / dt, (y1 - y0) / dt)
        old = track.velocity
        track.velocity = step if old is None else ((old[0] + step[0]) / 2, (old[1] + step[1]) / 2)
    if look is not None:
        track.look = _unit(look if track.look is None else (1 - LOOK_UPDATE) * track.look + LOOK_UPDATE * look)
    track.box, track.time_s = box, time_s


def _unit(vector: np.ndarray) -> Look:
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


@dataclass
class _Piece:
    """One track of the frame-to-frame pass, as re-identification compares it."""

    first: int  # sample position of its first face
    last: int
    first_box: FaceBox
    last_box: FaceBox
    look: Look | None  # mean appearance of its faces


def _reidentified(
    pieces: list[list[int]],
    boxes_per_frame: Sequence[Sequence[FaceBox]],
    looks_per_frame: Sequence[Sequence[Look | None]],
) -> list[list[int]]:
    """The frame-to-frame ids with each piece continued by a later one that looks like it, renumbered 0, 1, …"""
    found = _pieces(pieces, boxes_per_frame, looks_per_frame)
    root: dict[int, int] = {}
    continued: set[int] = set()
    for later_id in sorted(found, key=lambda i: found[i].first):
        later = found[later_id]
        candidates = [
            (float(earlier.look @ later.look), earlier_id)
            for earlier_id, earlier in found.items()
            if earlier_id not in continued and _may_continue(earlier, later)
        ]
        similarity, earlier_id = max(candidates, default=(-1.0, -1))
        if similarity >= REID_SIMILARITY:
            continued.add(earlier_id)
            root[later_id] = root.get(earlier_id, earlier_id)
    renumbered: dict[int, int] = {}
    for piece_id in sorted(found, key=lambda i: found[i].first):
        renumbered.setdefault(root.get(piece_id, piece_id), len(renumbered))
    return [[renumbered[root.get(i, i)] for i in ids] for ids in pieces]


def _may_continue(earlier: _Piece, later: _Piece) -> bool:
    """Whether ``later`` could be ``earlier`` seen again: after it, soon enough, of a like size, both with a look."""
    if earlier.look is None or later.look is None or not 0 < later.first - earlier.last <= REID_MAX_GAP + 1:
        return False
    return abs(math.log(_size(later.first_box) / _size(earlier.last_box))) <= math.log(REID_SIZE_RATIO)


def _pieces(
    pieces: list[list[int]],
    boxes_per_frame: Sequence[Sequence[FaceBox]],
    looks_per_frame: Sequence[Sequence[Look | None]],
) -> dict[int, _Piece]:
    found: dict[int, _Piece] = {}
    sums: dict[int, np.ndarray] = {}
    for k, (ids, boxes, looks) in enumerate(zip(pieces, boxes_per_frame, looks_per_frame, strict=True)):
        for piece_id, box, look in zip(ids, boxes, looks, strict=True):
            piece = found.setdefault(piece_id, _Piece(k, k, box, box, None))
            piece.last, piece.last_box = k, box
            if look is not None:
                sums[piece_id] = sums.get(piece_id, 0) + look
    for piece_id, total in sums.items():
        found[piece_id].look = _unit(total)
    return found
