"""Face tracks across sparse samples: one track per person on generated clips run through the real MTCNN, the
association cost's gates, re-identification, and a stray detection that cannot decide the video.

The clips are 32 sampled frames, 0.25 s apart, of real faces (skimage's astronaut and cameraman) pasted on a real
photograph: a face walking and zooming, a camera panning until the face leaves and comes back, two people crossing
twice, and a face walking out on one side and back in on the other. Faces move 0.55 of their width between two
samples, where box IoU (the tracker this replaced) split one person into 16–28 tracks.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import numpy as np
import pytest
from PIL import Image

from deepsift.engines.aggregate import COVERAGE_WEIGHTED, MAX_OF_COVERED, AggregationRule, ScoredItem, aggregate
from deepsift.engines.faces import FaceBox, FaceCrop, MtcnnFaceDetector, appearance, crop_faces
from deepsift.engines.media import SampledFrame
from deepsift.engines.tracking import (
    GATE_FAR,
    MAX_TRACK_GAP,
    REID_MAX_GAP,
    TrackState,
    assign_tracks,
    link_cost,
    unit_look,
)

WIDTH, HEIGHT, SAMPLES, STEP_S, FACE = 480, 270, 32, 0.25, 42.0
STEP = 0.55  # of a face's width, between two samples
Rect = tuple[int, int, int, int]


def _box(x0: float, y0: float, x1: float, y1: float) -> FaceBox:
    return FaceBox(x0, y0, x1, y1, 0.99)


# --- generated clips -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def heads() -> dict[str, tuple[np.ndarray, float]]:
    """Head patches and the width of the face in each, in patch pixels."""
    from skimage import data

    cameraman = np.stack([data.camera()] * 3, axis=-1)
    return {"astronaut": (data.astronaut()[20:215, 140:310], 87.0), "cameraman": (cameraman[85:225, 165:290], 55.0)}


def _background(width: int) -> np.ndarray:
    from skimage import data

    return np.array(Image.fromarray(data.coffee()).resize((width, HEIGHT)))


def _paste(frame: np.ndarray, head: tuple[np.ndarray, float], face_px: float, x: float, y: float) -> Rect:
    """The head pasted with its face ``face_px`` wide and its top-left at (x, y), cut at the frame's edges."""
    patch, face_width = head
    scale = face_px / face_width
    patch = np.asarray(Image.fromarray(patch).resize((round(patch.shape[1] * scale), round(patch.shape[0] * scale))))
    x, y, (h, w) = round(x), round(y), patch.shape[:2]
    fx0, fy0, fx1, fy1 = max(x, 0), max(y, 0), min(x + w, frame.shape[1]), min(y + h, frame.shape[0])
    if fx1 > fx0 and fy1 > fy0:
        frame[fy0:fy1, fx0:fx1] = patch[fy0 - y : fy1 - y, fx0 - x : fx1 - x]
    return x, y, x + w, y + h


def _bouncing(k: int, start: float, speed: float, low: float, high: float) -> float:
    """Position at sample k of something moving at ``speed`` per sample between ``low`` and ``high``, bouncing."""
    span = high - low
    u = (start - low + speed * k) % (2 * span)
    return low + (u if u <= span else 2 * span - u)


Truth = list[dict[str, Rect]]  # per sample: where each head was pasted
Scene = tuple[list[SampledFrame], Truth]


def _walk_zoom(heads) -> Scene:
    """The astronaut walking to and fro while the camera zooms in (face 42 → 84 px); in sample 11 a small second
    face on the background: one stray detection."""
    frames, truth = [], []
    for k in range(SAMPLES):
        face = FACE * (1 + k / (SAMPLES - 1))
        rgb = _background(WIDTH)
        where = {
            "astronaut": _paste(rgb, heads["astronaut"], face, _bouncing(k, 0, STEP * face, 0, WIDTH - 2.1 * face), 40)
        }
        if k == 11:
            where["stray"] = _paste(rgb, heads["cameraman"], 36, 400, 200)
        frames.append(rgb)
        truth.append(where)
    return _sampled(frames), truth


def _cross(heads) -> Scene:
    """The astronaut and the cameraman walking in opposite directions, crossing twice, one passing over the other."""
    frames, truth = [], []
    for k in range(SAMPLES):
        rgb = _background(WIDTH)
        right = WIDTH - 2 * FACE
        cameraman = _paste(rgb, heads["cameraman"], FACE, _bouncing(k, right, -STEP * FACE, 0, right), 110)
        astronaut = _paste(rgb, heads["astronaut"], FACE, _bouncing(k, 0, STEP * FACE, 0, right), 70)
        frames.append(rgb)
        truth.append({"astronaut": astronaut, "cameraman": cameraman})
    return _sampled(frames), truth


def _pan(heads) -> Scene:
    """A camera panning over a wide scene until the astronaut leaves the frame, and back."""
    wide = _background(3 * WIDTH)
    x0, y0, x1, y1 = _paste(wide, heads["astronaut"], FACE, 300, 80)
    frames, truth = [], []
    for k in range(SAMPLES):
        offset = round(_bouncing(k, 0, STEP * FACE, 0, 400))
        frames.append(np.ascontiguousarray(wide[:, offset : offset + WIDTH]))
        truth.append({"astronaut": (x0 - offset, y0, x1 - offset, y1)})
    return _sampled(frames), truth


def _reenter(heads) -> Scene:
    """The astronaut walking out of the frame on the right and, a few samples later, back in from the left."""
    frames, truth = [], []
    for k in range(SAMPLES):
        rgb = _background(WIDTH)
        x = (240 + STEP * FACE * k) % (WIDTH + 70 + 2 * STEP * FACE) - 90
        truth.append({"astronaut": _paste(rgb, heads["astronaut"], FACE, x, 60)})
        frames.append(rgb)
    return _sampled(frames), truth


def _sampled(frames: list[np.ndarray]) -> list[SampledFrame]:
    """Every 8th frame of a 32 fps clip: 0.25 s apart."""
    return [SampledFrame(8 * k, STEP_S * k, rgb) for k, rgb in enumerate(frames)]


@pytest.fixture(scope="module")
def detector() -> MtcnnFaceDetector:
    return MtcnnFaceDetector(min_face_size=32)  # the faces are 36 px and more; a coarser pyramid is 3× faster


@pytest.fixture(scope="module")
def tracked(heads, detector) -> Callable[[str], tuple[Truth, list[FaceCrop]]]:
    """A scene by name: where its heads were pasted, and its crops from ``crop_faces`` (detected once per module)."""
    scenes = {"walk_zoom": _walk_zoom, "cross": _cross, "pan": _pan, "reenter": _reenter}
    done: dict[str, tuple[Truth, list[FaceCrop]]] = {}

    def get(name: str) -> tuple[Truth, list[FaceCrop]]:
        if name not in done:
            frames, truth = scenes[name](heads)
            done[name] = truth, crop_faces(frames, detector, margin=0.3)
        return done[name]

    return get


def _whose(crop: FaceCrop, truth: Truth) -> str:
    """The pasted head whose centre is nearest the detected face's, among those that hold it."""
    cx, cy = (crop.box.x0 + crop.box.x1) / 2, (crop.box.y0 + crop.box.y1) / 2
    holding = {name: r for name, r in truth[crop.frame_index // 8].items() if r[0] <= cx <= r[2] and r[1] <= cy <= r[3]}
    assert holding, f"a detection on the background at ({cx:.0f}, {cy:.0f})"
    return min(holding, key=lambda n: abs((holding[n][0] + holding[n][2]) / 2 - cx))


def _tracks_per_person(crops: list[FaceCrop], truth: Truth) -> dict[str, set[int]]:
    found: dict[str, set[int]] = {}
    for crop in crops:
        found.setdefault(_whose(crop, truth), set()).add(crop.track_id)
    return found


def _samples_seen(crops: list[FaceCrop], person: str, truth: Truth) -> list[int]:
    return sorted(c.frame_index // 8 for c in crops if _whose(c, truth) == person)


def _steps_in_face_widths(crops: list[FaceCrop]) -> list[float]:
    """How far the face moved between consecutive samples, in its widths."""
    by_sample = {c.frame_index // 8: c.box for c in crops}
    return [
        abs((b.x0 + b.x1) / 2 - (a.x0 + a.x1) / 2) / a.width
        for k, a in by_sample.items()
        if (b := by_sample.get(k + 1)) is not None
    ]


# --- one track per person, real MTCNN ---------------------------------------------------------------------


def test_a_face_walking_and_zooming_keeps_one_track_over_32_sparse_samples(tracked) -> None:
    # Given the astronaut moving about half her width between samples while her face doubles in size
    truth, crops = tracked("walk_zoom")
    astronaut = [c for c in crops if _whose(c, truth) == "astronaut"]
    assert len(astronaut) == SAMPLES and np.median(_steps_in_face_widths(astronaut)) > 0.45
    assert astronaut[-1].box.width > 1.7 * astronaut[0].box.width
    # Then all her faces are one track, and the stray face in sample 11 is another
    tracks = _tracks_per_person(crops, truth)
    assert len(tracks["astronaut"]) == 1 and tracks["stray"].isdisjoint(tracks["astronaut"])


def test_two_people_crossing_keep_their_own_tracks(tracked) -> None:
    # Given two people walking in opposite directions, who cross (their left-to-right order changes) twice
    truth, crops = tracked("cross")
    order = [t["astronaut"][0] < t["cameraman"][0] for t in truth]
    assert sum(a != b for a, b in pairwise(order)) == 2
    # Then each keeps one track of their own through both crossings
    tracks = _tracks_per_person(crops, truth)
    assert [len(tracks[p]) for p in ("astronaut", "cameraman")] == [1, 1]
    assert tracks["astronaut"] != tracks["cameraman"]
    assert len(_samples_seen(crops, "astronaut", truth)) == SAMPLES


def test_a_panning_camera_keeps_one_track_though_the_face_leaves_and_comes_back(tracked) -> None:
    # Given a pan that takes the face out of the frame for longer than a track stays live
    truth, crops = tracked("pan")
    seen = _samples_seen(crops, "astronaut", truth)
    assert max(b - a - 1 for a, b in pairwise(seen)) > MAX_TRACK_GAP
    # Then the face that comes back is re-identified: one track
    assert len(_tracks_per_person(crops, truth)["astronaut"]) == 1


def test_a_face_that_leaves_on_one_side_and_reenters_on_the_other_rejoins_its_track(tracked) -> None:
    # Given a face that walks out on the right and, some samples later, in from the left
    truth, crops = tracked("reenter")
    seen = _samples_seen(crops, "astronaut", truth)
    gap = max(range(len(seen) - 1), key=lambda i: seen[i + 1] - seen[i])
    assert MAX_TRACK_GAP < seen[gap + 1] - seen[gap] - 1 <= REID_MAX_GAP
    before, after = (next(c for c in crops if c.frame_index // 8 == seen[i]) for i in (gap, gap + 1))
    assert before.box.x0 > WIDTH / 2 > after.box.x1
    # Then it is one track all along
    assert len(_tracks_per_person(crops, truth)["astronaut"]) == 1


def test_one_stray_detection_does_not_decide_the_video(tracked) -> None:
    # Given the walking face scored real and the one stray detection scored fake, with confident detections
    truth, crops = tracked("walk_zoom")
    stray = [c for c in crops if _whose(c, truth) == "stray"]
    assert len(stray) == 1 and stray[0].box.confidence > 0.9
    items = [
        ScoredItem(c.frame_index, 0.97 if c is stray[0] else 0.1, c.track_id, c.box.confidence, 0.01) for c in crops
    ]
    # When aggregated, Then the person's score decides, by the track that covers the video
    media = aggregate(items, AggregationRule.parse("mean"), min_track_fraction=0.1)
    assert media.p_fake == pytest.approx(0.1) and media.decision == MAX_OF_COVERED
    assert media.decisive_track == crops[0].track_id != stray[0].track_id


def test_with_one_face_per_sample_in_its_own_track_the_stray_still_cannot_decide(tracked) -> None:
    # Given the tracks as fragmented as box IoU left them (here: every face its own track), the stray scored fake
    truth, crops = tracked("walk_zoom")
    items = [
        ScoredItem(c.frame_index, 0.97 if _whose(c, truth) == "stray" else 0.1, i, c.box.confidence, 0.01)
        for i, c in enumerate(crops)
    ]
    # When aggregated, Then no track is covered and the weighted fallback says real (the old max said 0.97)
    media = aggregate(items, AggregationRule.parse("mean"), min_track_fraction=0.1)
    assert media.decision == COVERAGE_WEIGHTED and media.p_fake < 0.15


# --- the association cost ---------------------------------------------------------------------------------


def _track(box: FaceBox, **state) -> TrackState:
    return TrackState(0, box, 0.0, **state)


def test_a_face_half_its_width_on_links_and_the_cost_grows_with_distance() -> None:
    track = _track(_box(100, 100, 140, 150))
    near, half, far = (link_cost(track, _box(100 + dx, 100, 140 + dx, 150), None, 0.25) for dx in (2, 22, 60))
    assert near < half < far < np.inf


def test_the_gate_widens_with_the_time_between_samples_up_to_a_bound() -> None:
    # Given a face two face sizes away from where its track was
    track = _track(_box(0, 0, 40, 40))
    moved = _box(80, 0, 120, 40)
    # Then it is too far 0.1 s later, near enough 1 s later; and beyond GATE_FAR sizes nothing links, however late
    assert link_cost(track, moved, None, 0.1) == np.inf and link_cost(track, moved, None, 1.0) < np.inf
    beyond = GATE_FAR * 40 + 10
    assert link_cost(track, _box(beyond, 0, beyond + 40, 40), None, 60.0) == np.inf


def test_a_moving_track_is_expected_where_its_velocity_takes_it() -> None:
    # Given a track moving right 100 px/s, 0.5 s later: a face where it should be costs less than one where it was
    track = _track(_box(0, 0, 40, 40), velocity=(100.0, 0.0))
    assert link_cost(track, _box(50, 0, 90, 40), None, 0.5) < link_cost(track, _box(0, 0, 40, 40), None, 0.5)


def test_size_appearance_and_absence_gates() -> None:
    box = _box(0, 0, 40, 40)
    look, other = unit_look(np.arange(12.0)), unit_look(np.arange(12.0)[::-1])
    assert link_cost(_track(box), _box(0, 0, 80, 80), None, 0.25) == np.inf  # twice the size in a quarter second
    assert link_cost(_track(box, look=look), box, other, 0.25) == np.inf  # another face in the same place
    assert link_cost(_track(box, look=look), box, look, 0.25) == pytest.approx(0.0)
    assert link_cost(_track(box, missed=MAX_TRACK_GAP + 1), box, None, 0.25) == np.inf  # an ended track


def test_faces_that_cross_keep_their_tracks_by_velocity_alone() -> None:
    # Given two faces walking towards each other, 25 px apart vertically, passing within 10 px at sample 4
    frames = [[_box(20 * k, 0, 20 * k + 40, 40), _box(170 - 20 * k, 25, 210 - 20 * k, 65)] for k in range(9)]
    # Then each keeps its id
    assert assign_tracks(frames, [0.25 * k for k in range(9)]) == [[0, 1]] * 9


def test_a_track_missed_longer_than_the_gap_is_continued_only_by_a_face_that_looks_like_it() -> None:
    face, elsewhere = _box(0, 0, 40, 40), _box(300, 0, 340, 40)
    look, other = unit_look(np.sin(np.arange(48.0))), unit_look(np.cos(np.arange(48.0) * 3))
    frames = [[face], [], [], [], [elsewhere]]
    assert assign_tracks(frames) == [[0], [], [], [], [1]]  # no appearance: a new track
    assert assign_tracks(frames, looks_per_frame=[[look], [], [], [], [look]]) == [[0], [], [], [], [0]]
    assert assign_tracks(frames, looks_per_frame=[[look], [], [], [], [other]]) == [[0], [], [], [], [1]]
    too_late = [[face]] + [[]] * (REID_MAX_GAP + 1) + [[elsewhere]]
    looks = [[look]] + [[]] * (REID_MAX_GAP + 1) + [[look]]
    assert assign_tracks(too_late, looks_per_frame=looks)[-1] == [1]


# --- appearance -------------------------------------------------------------------------------------------


def test_appearance_tells_the_same_face_from_another_at_any_size(heads) -> None:
    astronaut, cameraman = heads["astronaut"][0], heads["cameraman"][0]
    box = _box(41, 42, 128, 152)  # the astronaut's face in her head patch
    small = np.asarray(Image.fromarray(astronaut).resize((85, 98)))
    same = appearance(astronaut, box) @ appearance(small, _box(20.5, 21, 64, 76))
    other = appearance(astronaut, box) @ appearance(cameraman, _box(34, 34, 89, 107))
    assert same > 0.9 and other < 0.5


def test_appearance_is_the_same_for_a_tensor_and_an_array(heads) -> None:
    torch = pytest.importorskip("torch")
    rgb, box = heads["astronaut"][0], _box(40.6, 41.8, 128.3, 152.2)
    on_host = appearance(rgb, box)
    as_tensor = appearance(torch.from_numpy(np.ascontiguousarray(rgb)), box)
    assert on_host.shape == (16 * 16 * 3,) and np.allclose(on_host, as_tensor, atol=1e-5)


def test_appearance_of_a_box_outside_the_frame_or_on_a_flat_patch_is_none() -> None:
    grey = np.full((50, 50, 3), 128, np.uint8)
    assert appearance(grey, _box(60, 60, 90, 90)) is None and appearance(grey, _box(5, 5, 40, 40)) is None
