"""Reading through a video to its sampled frames skips the unreferenced frames before each target: the kept
frames must be the very frames a full decode gives, while fewer frames are decoded."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from deepsift.engines import _pyav_video as pyav_video
from deepsift.engines._media_types import open_source
from deepsift.engines.budgets import MediaBudget
from deepsift.engines.media import write_video
from tests.scenes import moving_face_frames


@pytest.fixture(scope="module")
def b_frame_clip(tmp_path_factory) -> Path:
    """Three seconds of 320x180 at 25 fps, libx264's defaults: B-frames, most of them unreferenced."""
    path = tmp_path_factory.mktemp("skip") / "clip.mp4"
    write_video(path, moving_face_frames(320, 180, 75, seed=1), fps=25.0)
    return path


def _every_frame(path: Path) -> dict[int, np.ndarray]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        start, fps = float((stream.start_time or 0) * stream.time_base), float(stream.average_rate)
        return {round((f.time - start) * fps): f.to_ndarray(format="rgb24") for f in container.decode(stream)}


def _scan(path: Path, targets: list[int]) -> pyav_video._Scan:
    with av.open(str(path)) as container:
        return pyav_video._scan_targets(container, container.streams.video[0], targets, seek=False)


def test_the_clip_has_unreferenced_frames(b_frame_clip: Path) -> None:
    with av.open(str(b_frame_clip)) as container:
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = "NONREF"
        assert len(list(container.decode(stream))) < 60  # of 75: the test below would prove nothing without them


def test_sampled_frames_equal_a_full_decode_and_fewer_frames_are_decoded(b_frame_clip: Path) -> None:
    every = _every_frame(b_frame_clip)
    targets = pyav_video.sample_frame_indices(len(every), 12)
    scan = _scan(b_frame_clip, targets)
    assert [f.index for f in scan.found] == targets
    for frame in scan.found:
        np.testing.assert_array_equal(frame.rgb, every[frame.index])
    assert scan.decoded < 0.8 * targets[-1]


def test_adjacent_targets_are_all_decoded(b_frame_clip: Path) -> None:
    # Every frame a target: nothing may be skipped
    every = _every_frame(b_frame_clip)
    scan = _scan(b_frame_clip, list(range(20, 40)))
    assert [f.index for f in scan.found] == list(range(20, 40))
    for frame in scan.found:
        np.testing.assert_array_equal(frame.rgb, every[frame.index])


def test_decode_video_keeps_the_full_decodes_frames(b_frame_clip: Path) -> None:
    every = _every_frame(b_frame_clip)
    decoded = pyav_video.decode_video(open_source(b_frame_clip), 16, 64, MediaBudget())
    assert len(decoded.frames) == 16
    for frame in decoded.frames:
        np.testing.assert_array_equal(frame.rgb, every[frame.index])
