"""engines.mtcnn runs MTCNN's cascade with the candidates of a frame resized together: it must find what
facenet-pytorch's own detect finds, box for box."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepsift.engines import mtcnn
from tests.scenes import moving_face_frames


def _facenet(detector, batch: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    boxes, probs = detector._mtcnn.detect(batch)
    return [
        (np.zeros((0, 4)), np.zeros(0)) if b is None else (np.asarray(b, float), np.asarray(p, float))
        for b, p in zip(boxes, probs, strict=True)
    ]


def _assert_same(ours: list, theirs: list) -> None:
    assert len(ours) == len(theirs)
    for (boxes, probs), (their_boxes, their_probs) in zip(ours, theirs, strict=True):
        assert boxes.shape == their_boxes.shape
        order, their_order = np.argsort(-probs, kind="stable"), np.argsort(-their_probs, kind="stable")
        np.testing.assert_allclose(boxes[order], their_boxes[their_order], atol=1e-2)
        np.testing.assert_allclose(probs[order], their_probs[their_order], atol=1e-5)


def test_the_cascade_finds_what_facenet_finds_on_textured_frames(mtcnn_detector) -> None:
    # Given four 640x360 frames of a face crossing real photos (P-net proposes hundreds of boxes on them)
    batch = np.stack(list(moving_face_frames(640, 360, 4, seed=3)))
    # When both cascades run on the same batch
    ours = mtcnn.detect(mtcnn_detector._mtcnn, torch.from_numpy(batch))
    theirs = _facenet(mtcnn_detector, batch)
    # Then every frame has the same boxes and scores, and the face is among them
    _assert_same(ours, theirs)
    assert all(len(boxes) >= 1 for boxes, _ in ours)


@pytest.mark.parametrize("where", ["corner", "edge"])
def test_boxes_reaching_past_the_frame_are_cut_as_facenet_cuts_them(mtcnn_detector, astronaut, where) -> None:
    # Given the astronaut shifted so that her face is cut by the frame's corner or edge
    frame = np.zeros_like(astronaut)
    shift = (150, 130) if where == "corner" else (0, 150)
    frame[: 512 - shift[0], : 512 - shift[1]] = astronaut[shift[0] :, shift[1] :]
    batch = np.ascontiguousarray(frame[None])
    # Then both cascades agree
    _assert_same(mtcnn.detect(mtcnn_detector._mtcnn, torch.from_numpy(batch)), _facenet(mtcnn_detector, batch))


def test_a_frame_without_candidates_gives_no_boxes(mtcnn_detector) -> None:
    flat = np.full((2, 120, 160, 3), 128, np.uint8)
    assert [len(b) for b, _ in mtcnn.detect(mtcnn_detector._mtcnn, torch.from_numpy(flat))] == [0, 0]


def test_running_sums_are_exact_where_32_bits_would_overflow() -> None:
    # A frame over INT32_SUM_PIXELS sums in 64 bits: its last running sum is every pixel's value
    side = int(np.ceil(np.sqrt(mtcnn.INT32_SUM_PIXELS))) + 1
    frames = torch.full((1, side, side, 3), 255, dtype=torch.uint8)
    sums = mtcnn._integral(frames)
    assert sums.dtype == torch.int64 and int(sums[0, 0, -1, -1]) == 255 * side * side
