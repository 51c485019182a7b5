"""Face contract: MTCNN finds real faces only, crops are square and centred, tracks follow faces."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deepsift.engines.faces import (
    DETECT_MAX_SIDE,
    MAX_FACES_PER_FRAME,
    FaceBox,
    MtcnnFaceDetector,
    assign_tracks,
    crop_faces,
    detect_faces,
    iou,
    square_crop,
)
from deepsift.engines.media import SampledFrame, decode_sampled, write_video


def _box(x0: float, y0: float, x1: float, y1: float, confidence: float = 0.99) -> FaceBox:
    return FaceBox(x0, y0, x1, y1, confidence)


# --- MTCNN --------------------------------------------------------------------------------------


def test_importing_faces_loads_no_torch() -> None:
    # Given a fresh interpreter, When engines.faces is imported, Then neither torch nor MTCNN is loaded
    code = "import sys, engines.faces; sys.exit(int('torch' in sys.modules or 'facenet_pytorch' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[3]).returncode == 0


def test_mtcnn_uses_the_weights_in_the_wheel_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a process that may not open network connections
    def refuse(*args, **kwargs):
        raise AssertionError("MTCNN tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    # When a detector is built, Then it loads the weights packaged in facenet-pytorch
    detector = MtcnnFaceDetector()
    import facenet_pytorch

    data = Path(facenet_pytorch.__file__).parent / "data"
    assert {p.name for p in data.glob("*.pt")} >= {"pnet.pt", "rnet.pt", "onet.pt"}
    assert detector.detect([np.zeros((64, 64, 3), np.uint8)]) == [[]]


def test_mtcnn_finds_the_one_face_in_astronaut(mtcnn_detector: MtcnnFaceDetector, astronaut: np.ndarray) -> None:
    # Given the astronaut portrait, When faces are detected
    (faces,) = mtcnn_detector.detect([astronaut])
    # Then there is exactly one, confident, around her face
    (face,) = faces
    assert face.confidence > 0.9
    assert 165 < face.x0 < 200 and 250 < face.x1 < 290
    assert 45 < face.y0 < 80 and 155 < face.y1 < 200


def test_min_confidence_filters_faces(astronaut: np.ndarray) -> None:
    # Given a detector that demands more than certainty, Then even the clear face is dropped
    assert MtcnnFaceDetector(min_confidence=1.0).detect([astronaut]) == [[]]


def test_mtcnn_finds_no_face_in_coffee_or_flat_grey(mtcnn_detector: MtcnnFaceDetector) -> None:
    from skimage import data

    # Given a cup of coffee and a flat grey frame, Then no faces
    grey = np.full((360, 640, 3), 128, np.uint8)
    assert mtcnn_detector.detect([data.coffee(), grey]) == [[], []]


def test_mixed_frame_sizes_are_grouped_and_answered_in_order(
    mtcnn_detector: MtcnnFaceDetector, astronaut: np.ndarray
) -> None:
    # Given frames of three sizes, interleaved, two of them the portrait at half size
    small = np.ascontiguousarray(astronaut[::2, ::2])
    grey = np.full((100, 150, 3), 128, np.uint8)
    shifted = np.ascontiguousarray(small[:, 20:])
    # When detected in one call
    found = mtcnn_detector.detect([grey, small, grey, shifted])
    # Then the answers come back in input order, and the shifted face moved 20 px left
    assert [len(faces) for faces in found] == [0, 1, 0, 1]
    assert found[3][0].x0 == pytest.approx(found[1][0].x0 - 20, abs=2)


def test_batched_detection_matches_one_at_a_time(mtcnn_detector: MtcnnFaceDetector, astronaut: np.ndarray) -> None:
    # Given two same-size frames, When detected as a batch and one by one, Then the boxes agree
    frames = [astronaut, np.ascontiguousarray(astronaut[:, ::-1])]
    batched = mtcnn_detector.detect(frames)
    single = [mtcnn_detector.detect([frame])[0] for frame in frames]
    for b, s in zip(batched, single, strict=True):
        assert len(b) == len(s) == 1
        assert (b[0].x0, b[0].y0, b[0].x1, b[0].y1) == pytest.approx((s[0].x0, s[0].y0, s[0].x1, s[0].y1), abs=0.5)


# --- square_crop --------------------------------------------------------------------------------


def test_square_crop_is_square_and_centred_on_the_box() -> None:
    # Given a frame whose pixels encode their position, and a 20x40 box centred at (20, 40)
    ys, xs = np.mgrid[0:100, 0:100]
    rgb = np.stack([xs, ys, np.zeros_like(xs)], axis=2).astype(np.uint8)
    # When cropped with a 50 % margin
    crop = square_crop(rgb, _box(10, 20, 30, 60), margin=0.5)
    # Then the crop is 60x60 (40 * 1.5), its centre pixel is the box centre, its corner (10, 10) away
    assert crop.shape == (60, 60, 3)
    assert tuple(crop[30, 30, :2]) == (20, 40)
    assert tuple(crop[0, 10, :2]) == (0, 10) and tuple(crop[59, 59, :2]) == (49, 69)


def test_square_crop_pads_with_black_at_the_border_instead_of_shifting() -> None:
    # Given a white frame and a 20x20 box whose centre is the frame's top-left corner
    rgb = np.full((50, 50, 3), 255, np.uint8)
    crop = square_crop(rgb, _box(-10, -10, 10, 10), margin=0.0)
    # Then the part outside the frame is black and the face centre stays at the crop centre
    assert crop.shape == (20, 20, 3)
    assert crop[:10, :].max() == 0 and crop[:, :10].max() == 0
    assert crop[10:, 10:].min() == 255


# --- tracks -------------------------------------------------------------------------------------


def test_a_moving_face_keeps_one_track() -> None:
    # Given one face moving 10 px per sampled frame
    boxes = [[_box(100 + 10 * t, 50, 180 + 10 * t, 150)] for t in range(8)]
    # Then all its boxes share one track id
    assert assign_tracks(boxes) == [[0]] * 8


def test_two_faces_keep_separate_tracks_whatever_their_order() -> None:
    # Given two faces far apart, listed in either order from frame to frame
    left, right = _box(0, 0, 50, 50), _box(200, 0, 250, 50)
    tracks = assign_tracks([[left, right], [right, left], [left, right]])
    # Then each keeps its own id
    assert tracks == [[0, 1], [1, 0], [0, 1]]


def test_a_track_survives_two_missed_frames_but_not_three() -> None:
    face = _box(0, 0, 50, 50)
    assert assign_tracks([[face], [], [], [face]]) == [[0], [], [], [0]]
    assert assign_tracks([[face], [], [], [], [face]]) == [[0], [], [], [], [1]]


def test_a_jump_without_overlap_starts_a_new_track() -> None:
    assert iou(_box(0, 0, 50, 50), _box(300, 300, 350, 350)) == 0.0
    assert assign_tracks([[_box(0, 0, 50, 50)], [_box(300, 300, 350, 350)]]) == [[0], [1]]


# --- crop_faces ---------------------------------------------------------------------------------


def test_crop_faces_on_a_pan_over_astronaut_gives_one_track(
    mtcnn_detector: MtcnnFaceDetector, astronaut: np.ndarray, tmp_path: Path
) -> None:
    # Given an H.264 clip panning a 320x320 window across the portrait, 4 px per frame
    path = tmp_path / "pan.mp4"
    write_video(path, (astronaut[:320, 4 * t : 4 * t + 320] for t in range(40)))
    frames = decode_sampled(path, 6).frames
    # When faces are cropped with a 30 % margin
    crops = crop_faces(frames, mtcnn_detector, margin=0.3)
    # Then each sampled frame has the face, all in one track, as square crops
    assert [c.frame_index for c in crops] == [f.index for f in frames]
    assert {c.track_id for c in crops} == {0} and {c.face_index for c in crops} == {0}
    for crop in crops:
        assert crop.rgb.shape[0] == crop.rgb.shape[1] == round(max(crop.box.width, crop.box.height) * 1.3)
    # And the face moves left with the pan
    assert crops[-1].box.x0 < crops[0].box.x0 - 100


# --- detection at a bounded size -----------------------------------------------------------------------


def _on_canvas(portrait: np.ndarray, width: int = 1920, height: int = 1080, left: int = 400) -> np.ndarray:
    """The portrait pasted on a grey frame of width x height (the portrait as high as the frame at most)."""
    frame = np.full((height, width, 3), 110, np.uint8)
    frame[: portrait.shape[0], left : left + portrait.shape[1]] = portrait[:height]
    return frame


@pytest.fixture(scope="module")
def large_portrait(astronaut: np.ndarray) -> np.ndarray:
    """A 1920x1080 frame with the astronaut 1080 high: her face is about 190 px wide."""
    from PIL import Image

    return _on_canvas(np.asarray(Image.fromarray(astronaut).resize((1080, 1080))))


def test_frames_smaller_than_the_smallest_face_get_no_faces_instead_of_an_mtcnn_error(
    mtcnn_detector: MtcnnFaceDetector,
) -> None:
    # Given frames under MTCNN's 20 px minimum face (its image pyramid would be empty) and one at it
    tiny = [np.zeros((1, 1, 3), np.uint8), np.zeros((19, 400, 3), np.uint8), np.full((20, 20, 3), 128, np.uint8)]
    # When detected, Then none has a face and nothing raises
    assert mtcnn_detector.detect(tiny) == [[], [], []]
    assert mtcnn_detector.min_face_size == 20


def test_detection_on_a_downscaled_copy_finds_the_full_resolution_box(
    mtcnn_detector: MtcnnFaceDetector, large_portrait: np.ndarray
) -> None:
    # Given a 1920x1080 frame with a 190 px face, When searched at full size and on a copy 640 px long (1/3)
    (full,) = mtcnn_detector.detect([large_portrait])
    (small,) = detect_faces(mtcnn_detector, [large_portrait], max_side=640)
    # Then both find the one face, and the copy's box, mapped back to the frame, overlaps it with IoU >= 0.9
    assert len(full) == len(small) == 1
    assert iou(full[0], small[0]) >= 0.9
    assert 400 < small[0].x0 < small[0].x1 < 1480  # in the frame's pixels, not the copy's


def test_at_the_default_size_a_face_above_the_stated_floor_is_found_where_full_resolution_finds_it(
    mtcnn_detector: MtcnnFaceDetector, astronaut: np.ndarray
) -> None:
    from PIL import Image

    # Given a 1920x1080 frame with a face about 100 px wide (33 px in the default 640 copy: the stated size from which
    # boxes keep IoU >= 0.9; faces are found from 20 * 1920 / 640 = 60 px, their boxes looser below 100 px)
    assert DETECT_MAX_SIDE == 640
    frame = _on_canvas(np.asarray(Image.fromarray(astronaut).resize((600, 600))))
    # When searched at full size and at the default detect_max_side
    (full,) = mtcnn_detector.detect([frame])
    (small,) = detect_faces(mtcnn_detector, [frame])
    # Then the copy finds the one face full resolution finds, at IoU >= 0.9
    assert len(full) == len(small) == 1
    assert iou(full[0], small[0]) >= 0.9


def test_detection_on_a_torch_frame_is_downscaled_on_its_device_like_a_numpy_frame(
    mtcnn_detector: MtcnnFaceDetector, large_portrait: np.ndarray
) -> None:
    import torch

    (from_numpy,) = detect_faces(mtcnn_detector, [large_portrait], max_side=640)
    (from_tensor,) = detect_faces(mtcnn_detector, [torch.from_numpy(large_portrait)], max_side=640)
    assert len(from_numpy) == len(from_tensor) == 1 and iou(from_numpy[0], from_tensor[0]) >= 0.9


def test_the_smallest_face_searched_for_is_20_detection_pixels_relative_to_the_frame(
    mtcnn_detector: MtcnnFaceDetector, astronaut: np.ndarray
) -> None:
    # Given a 1920x1080 frame with a face about 44 px wide (the portrait at half size)
    frame = _on_canvas(np.ascontiguousarray(astronaut[::2, ::2]))
    # Then at full size, and on a copy 1280 long (floor 20 * 1920 / 1280 = 30 px: the face is above it), it is found
    assert len(mtcnn_detector.detect([frame])[0]) == 1
    assert len(detect_faces(mtcnn_detector, [frame], max_side=1280)[0]) == 1
    # but on a copy 400 long the floor is 96 px and the face, 9 px there, is under half of it: not found
    # (MTCNN's pyramid starts at its minimum face; it still catches some faces down to about half that size)
    assert detect_faces(mtcnn_detector, [frame], max_side=400) == [[]]


def test_crops_are_cut_from_the_frame_at_full_resolution(
    mtcnn_detector: MtcnnFaceDetector, large_portrait: np.ndarray
) -> None:
    # Given the 1920x1080 frame searched on a copy 640 long, When its face is cropped with a 30 % margin
    frame = SampledFrame(index=0, pts_s=None, rgb=large_portrait)
    (crop,) = crop_faces([frame], mtcnn_detector, margin=0.3, max_side=640)
    # Then the crop is the frame's own pixels around the mapped-back box (about 250 px, not a third of it)
    assert crop.rgb.shape[0] == round(max(crop.box.width, crop.box.height) * 1.3) > 200
    np.testing.assert_array_equal(crop.rgb, square_crop(large_portrait, crop.box, 0.3))


class _Crowd:
    """A detector that sees twenty faces in every frame, the i-th with confidence 0.5 + i / 50."""

    def detect(self, frames):
        return [[_box(10 * i, 0, 10 * i + 8, 8, 0.5 + i / 50) for i in range(20)] for _ in frames]


def test_a_crowd_keeps_its_most_confident_faces_per_frame() -> None:
    (kept,) = detect_faces(_Crowd(), [np.zeros((64, 256, 3), np.uint8)])
    assert len(kept) == MAX_FACES_PER_FRAME == 16
    assert min(box.confidence for box in kept) == pytest.approx(0.5 + 4 / 50)
