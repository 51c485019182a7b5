"""Media budgets: which probed facts are refused with which code, and the sizes large media is decoded at."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from deepsift.engines.budgets import DECODER_THREAD_BYTES, MediaBudget, decoder_threads, detection_size
from deepsift.engines.dali import DaliDecoder, DaliSettings
from deepsift.engines.errors import MediaError
from deepsift.engines.media import MediaFacts, decode_sampled, write_video


def video(width: int, height: int, frames: int | None = 100, duration_s: float | None = 4.0) -> MediaFacts:
    return MediaFacts("video", "mp4", "h264", width, height, 25.0, duration_s, frames, 1000)


def image(width: int, height: int) -> MediaFacts:
    return MediaFacts("image", "JPEG", "jpeg", width, height, None, None, 1, 1000)


def code(budget: MediaBudget, facts: MediaFacts) -> str | None:
    try:
        budget.check(facts)
    except MediaError as e:
        return e.code
    return None


# --- check ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "facts, expected",
    [
        (image(13_000, 13_000), "too_many_pixels"),  # 169 Mpx: the JPEG bomb
        (image(10_000, 10_000), None),  # 100 Mpx: at the limit
        (image(7680, 4320), None),  # an 8K photo
        (image(1, 1), "too_small"),
        (image(1, 4000), "too_small"),  # a one-pixel line
        (image(2, 2), None),
        (video(7680, 4320), None),  # 8K video is judged (downscaled), not refused
        (video(8192, 8192), "too_many_pixels"),  # 67 Mpx frames
        (video(3840, 2160, frames=54_000, duration_s=1800.0), None),  # a 30-minute 4K30 recording
        (video(3840, 2160, frames=108_000, duration_s=1800.0), None),  # a 30-minute 4K60 recording (8.96e11 px)
        (video(1920, 1080, frames=None, duration_s=7300.0), "too_long"),
        (video(3840, 2160, frames=121_000, duration_s=None), "too_many_pixels"),  # 1.003e12 px in all (81 min of 4K25)
        (video(1920, 1080, frames=None, duration_s=None), None),  # nothing declared: the decoder's truncation rule
    ],
)
def test_default_budget_refuses_bombs_and_judges_large_legitimate_media(facts: MediaFacts, expected: str | None):
    assert code(MediaBudget(), facts) == expected


def test_each_limit_is_its_own_setting() -> None:
    # Given a 640x480, 100-frame, 4 s video, When each limit is set just below it, Then that limit refuses it
    facts = video(640, 480)
    assert code(MediaBudget(max_frame_pixels=640 * 480 - 1), facts) == "too_many_pixels"
    assert code(MediaBudget(max_video_pixels=100 * 640 * 480 - 1), facts) == "too_many_pixels"
    assert code(MediaBudget(max_duration_s=3.9), facts) == "too_long"
    assert code(MediaBudget(min_side=481), facts) == "too_small"
    # and an image is held to the image limit, not the frame limit
    assert code(MediaBudget(max_frame_pixels=100), image(640, 480)) is None
    assert code(MediaBudget(max_image_pixels=640 * 480 - 1), image(640, 480)) == "too_many_pixels"


def test_a_size_the_header_leaves_unknown_is_left_to_the_decoder_but_the_length_is_still_checked() -> None:
    assert code(MediaBudget(), video(0, 0)) is None
    assert code(MediaBudget(max_duration_s=3.0), video(0, 0)) == "too_long"


def test_a_refusal_says_what_was_over_which_limit() -> None:
    with pytest.raises(MediaError) as caught:
        MediaBudget().check(image(13_000, 13_000))
    assert "13000x13000" in caught.value.detail and "100000000" in caught.value.detail


def test_nonsense_limits_are_rejected() -> None:
    with pytest.raises(ValueError):
        MediaBudget(max_frame_pixels=0)
    with pytest.raises(ValueError):
        MediaBudget(frame_budget_bytes=0)


# --- decode sizes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("width, height", [(3840, 2160), (7680, 4320), (4096, 4096), (1080, 1920), (36_000, 1000)])
@pytest.mark.parametrize("n_frames", [1, 32, 128])
def test_kept_frames_fit_the_frame_budget_with_their_aspect_ratio(width: int, height: int, n_frames: int) -> None:
    budget = MediaBudget(frame_budget_bytes=256 << 20)
    kept_w, kept_h = budget.kept_size(width, height, n_frames)
    assert n_frames * kept_w * kept_h * 3 <= budget.frame_budget_bytes
    assert kept_w <= width and kept_h <= height
    assert kept_w / kept_h == pytest.approx(width / height, rel=0.01)
    # and no smaller than needed: one more pixel on each side would not fit, unless the frame is kept whole
    if (kept_w, kept_h) != (width, height):
        assert n_frames * (kept_w + 2) * (kept_h + 2) * 3 > budget.frame_budget_bytes


def test_4k_phone_clips_are_kept_whole_by_default_and_8k_is_downscaled() -> None:
    budget = MediaBudget()  # 1 GiB for the sampled frames
    assert budget.decode_scale(3840, 2160, 32) == 1.0
    assert budget.decode_scale(7680, 4320, 32) == pytest.approx(math.sqrt((1 << 30) / (32 * 7680 * 4320 * 3)))
    assert budget.decode_scale(7680, 4320, 32) < 0.6


def test_detection_copies_are_bounded_but_never_squeezed_below_the_smallest_face() -> None:
    assert detection_size(3840, 2160, 1280) == (1280, 720)
    assert detection_size(1080, 1920, 1280) == (720, 1280)
    assert detection_size(640, 480, 1280) == (640, 480)  # small frames are searched as they are
    assert detection_size(40_000, 100, 1280, min_side=20) == (8000, 20)  # a panorama keeps a searchable height
    assert detection_size(40_000, 10, 1280, min_side=20) == (40_000, 10)  # never upscaled


def test_decoder_threads_shrink_as_frames_grow() -> None:
    assert 1 <= decoder_threads(7680, 4320) <= DECODER_THREAD_BYTES // (7680 * 4320 * 1.5)
    assert decoder_threads(100_000, 100_000) == 1
    assert decoder_threads(640, 480) >= decoder_threads(7680, 4320)


# --- the DALI decoder under a budget (routing only: no worker starts) ---------------------------------------


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("budget") / "clip.mp4"
    rng = np.random.default_rng(0)
    write_video(path, (rng.integers(0, 255, (96, 160, 3), dtype=np.uint8) for _ in range(30)))
    return path


def test_dali_refuses_media_over_the_budget_with_pyavs_code_and_never_starts_its_worker(small_clip: Path) -> None:
    decoder = DaliDecoder(DaliSettings(device="cpu"))
    try:
        with pytest.raises(MediaError) as caught:
            decoder(small_clip, 8, budget=MediaBudget(max_frame_pixels=160 * 96 - 1))
        assert caught.value.code == "too_many_pixels" and decoder.worker.starts == 0
    finally:
        decoder.close()


def test_dali_leaves_frames_over_the_frame_budget_to_pyav_which_downscales_them(small_clip: Path) -> None:
    # Given a budget that holds 8 frames at a quarter of their pixels
    budget = MediaBudget(frame_budget_bytes=8 * 80 * 48 * 3)
    decoder = DaliDecoder(DaliSettings(device="cpu"))
    try:
        decoded = decoder(small_clip, 8, budget=budget)
    finally:
        decoder.close()
    # Then PyAV decoded them, at the budget's size, saying why
    assert (decoded.decoder, decoded.fallback_reason, decoder.worker.starts) == ("pyav", "frame_budget", 0)
    assert {f.rgb.shape for f in decoded.frames} == {(48, 80, 3)}
    assert decoded.facts == decode_sampled(small_clip, 8).facts
