"""Decode contract: which frames come back, what the facts say, and how bad media fails."""

from __future__ import annotations

import io
import itertools
import struct
import subprocess
import sys
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from deepsift.engines import _pyav_video, media
from deepsift.engines.budgets import MediaBudget
from deepsift.engines.decoders import DECODERS, DecoderOptions
from deepsift.engines.errors import MediaError
from deepsift.engines.media import decode_sampled, probe, sample_frame_indices, should_seek, write_video

ALWAYS_SEEK, NEVER_SEEK = 1, 10**9


@pytest.fixture
def seek_count(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the seeks the decoder makes (one entry per seek)."""
    seeks: list[int] = []
    real_seek = _pyav_video._seek

    def counting_seek(*args, **kwargs):
        seeks.append(1)
        return real_seek(*args, **kwargs)

    monkeypatch.setattr(_pyav_video, "_seek", counting_seek)
    return seeks


# --- sample_frame_indices / should_seek ---------------------------------------------------------


def test_sample_indices_are_evenly_spaced_unique_and_span_the_video() -> None:
    # Given a 120-frame video, When 16 indices are sampled
    indices = sample_frame_indices(120, 16)
    # Then they start at the first frame, end at the last, and step by 7 or 8
    assert len(indices) == 16 and indices[0] == 0 and indices[-1] == 119
    assert set(np.diff(indices)) <= {7, 8}


def test_sample_indices_are_every_frame_when_the_video_is_shorter_than_n() -> None:
    # Given videos with fewer frames than asked for, Then every frame is sampled once
    assert sample_frame_indices(5, 32) == [0, 1, 2, 3, 4]
    assert sample_frame_indices(1, 32) == [0]
    assert sample_frame_indices(33, 32) == sorted(set(sample_frame_indices(33, 32)))


def test_sample_indices_reject_a_count_below_one() -> None:
    with pytest.raises(ValueError):
        sample_frame_indices(100, 0)


def test_should_seek_only_when_targets_are_far_apart() -> None:
    # Given the default gap rule, Then short videos are read through and long ones are seeked
    assert not should_seek(120, 16)
    assert should_seek(2400, 32)
    assert not should_seek(10**6, 1)


# --- video decode -------------------------------------------------------------------------------


@pytest.mark.parametrize("as_bytes", [False, True], ids=["path", "bytes"])
@pytest.mark.parametrize("seek_min_gap", [NEVER_SEEK, ALWAYS_SEEK], ids=["sequential", "seeking"])
def test_decode_returns_exactly_the_sampled_frames(
    clip_120: Path, read_index: Callable, seek_count: list[int], as_bytes: bool, seek_min_gap: int
) -> None:
    # Given a 120-frame clip whose frames draw their own index
    source = clip_120.read_bytes() if as_bytes else clip_120
    # When 16 frames are decoded, reading through or seeking
    decoded = decode_sampled(source, 16, seek_min_gap=seek_min_gap)
    # Then the frames are the sampled indices, with that content, time stamps and layout
    assert [f.index for f in decoded.frames] == sample_frame_indices(120, 16)
    assert [read_index(f.rgb) for f in decoded.frames] == [f.index for f in decoded.frames]
    assert [f.pts_s for f in decoded.frames] == pytest.approx([f.index / 25 for f in decoded.frames])
    for frame in decoded.frames:
        assert frame.rgb.shape == (96, 160, 3) and frame.rgb.dtype == np.uint8 and frame.rgb.flags.c_contiguous
    assert (len(seek_count) > 0) == (seek_min_gap == ALWAYS_SEEK)


def test_probe_and_decode_report_the_clip_facts(clip_120: Path) -> None:
    # Given the 120-frame, 25 fps H.264 clip, When it is probed and decoded
    facts = probe(clip_120)
    # Then the facts match the encoding, and decode reports the same facts
    assert facts.media_type == "video" and "mp4" in facts.container and facts.codec == "h264"
    assert (facts.width, facts.height, facts.fps, facts.frame_count) == (160, 96, 25.0, 120)
    assert facts.duration_s == pytest.approx(4.8)
    assert facts.size_bytes == clip_120.stat().st_size
    assert decode_sampled(clip_120, 4).facts == facts


def test_frame_count_is_estimated_from_duration_when_the_container_has_none(
    clip_120_mkv: Path, read_index: Callable
) -> None:
    # Given a Matroska clip (a duration but no frame count), When probed and decoded
    facts = probe(clip_120_mkv)
    decoded = decode_sampled(clip_120_mkv, 8)
    # Then the count is duration * fps and the last sampled frame is the real last frame
    assert facts.container == "matroska,webm" and facts.frame_count == 120
    assert [read_index(f.rgb) for f in decoded.frames] == sample_frame_indices(120, 8)


@pytest.mark.parametrize("seek_min_gap", [media.SEEK_MIN_GAP_FRAMES, NEVER_SEEK], ids=["default-seeks", "sequential"])
def test_long_video_decodes_in_bounded_memory(
    long_clip: Path, read_index: Callable, seek_count: list[int], seek_min_gap: int
) -> None:
    # Given a 2400-frame clip (about 110 MB as RGB), When 16 frames are sampled
    tracemalloc.start()
    try:
        decoded = decode_sampled(long_clip, 16, seek_min_gap=seek_min_gap)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Then only the 16 samples (~0.7 MB) were ever held, with the right content
    assert peak < 8 * 2**20
    assert [read_index(f.rgb) for f in decoded.frames] == sample_frame_indices(2400, 16)
    # And the default rule seeks once per target (keyframes every 25 frames, targets 160 apart)
    assert len(seek_count) == (16 if seek_min_gap == media.SEEK_MIN_GAP_FRAMES else 0)


def test_seeking_does_not_seek_back_into_a_keyframe_interval_it_already_decoded(
    clip_120: Path, seek_count: list[int], read_index: Callable
) -> None:
    # Given a clip whose only keyframe is the first frame, When every 8th frame is fetched by seeking
    decoded = decode_sampled(clip_120, 16, seek_min_gap=ALWAYS_SEEK)
    # Then one seek suffices: the index shows each later target lies past that keyframe
    assert len(seek_count) == 1
    assert [read_index(f.rgb) for f in decoded.frames] == sample_frame_indices(120, 16)


def test_display_rotation_is_applied_to_frames_and_facts(rotated_clip: Path) -> None:
    # Given a 160x96 clip flagged for a 90° counter-clockwise display rotation, band on top
    decoded = decode_sampled(rotated_clip, 2)
    rgb = decoded.frames[0].rgb
    # Then frames come back upright (96 wide, 160 high, the band on the left) and facts agree
    assert rgb.shape == (160, 96, 3)
    assert rgb[:, :8].mean() > 200 and rgb[:, -8:].mean() < 30
    assert (decoded.facts.width, decoded.facts.height) == (96, 160)
    assert (probe(rotated_clip).width, probe(rotated_clip).height) == (96, 160)


def test_the_registrys_pyav_decoder_is_this_modules_decoder(clip_120: Path, seek_count: list[int]) -> None:
    # Given the registry's pyav entry, built as the trainer and the daemon build it
    decoder = DECODERS.get("pyav")(DecoderOptions())
    # When it samples the clip under a budget that shrinks the frames, Then it is decode_sampled's decode
    budget = MediaBudget(frame_budget_bytes=4 * 80 * 48 * 3)
    decoded, expected = decoder(clip_120, 4, budget=budget), decode_sampled(clip_120, 4, budget=budget)
    assert decoder.name == decoded.decoder == "pyav" and decoded.facts == expected.facts
    assert decoded.scale == expected.scale == 0.5
    for a, b in zip(decoded.frames, expected.frames, strict=True):
        assert (a.index, a.pts_s) == (b.index, b.pts_s)
        np.testing.assert_array_equal(a.rgb, b.rgb)
    # with PyAV's seeking rule (targets 40 frames apart: read through, no seek)
    assert not seek_count


# --- images -------------------------------------------------------------------------------------


def test_png_is_one_frame_media_in_rgb(png_bytes: bytes) -> None:
    # Given an RGBA PNG, When decoded
    decoded = decode_sampled(png_bytes, 32)
    # Then it is one RGB frame with image facts
    assert decoded.facts == media.MediaFacts("image", "PNG", "png", 30, 20, None, None, 1, len(png_bytes))
    (frame,) = decoded.frames
    assert (frame.index, frame.pts_s) == (0, None)
    assert frame.rgb.shape == (20, 30, 3) and frame.rgb.flags.c_contiguous
    assert np.array_equal(frame.rgb[0, :, 0], np.arange(30) * 8)


def test_jpeg_exif_orientation_is_applied(jpeg_exif_rotated: bytes, tmp_path: Path) -> None:
    # Given a 100x40 JPEG, white block top-left, EXIF orientation 6 (turn 90° clockwise to show)
    path = tmp_path / "photo.jpg"
    path.write_bytes(jpeg_exif_rotated)
    # When probed and decoded from a path
    facts, decoded = probe(path), decode_sampled(path)
    # Then it is 40 wide and 100 high and the block is now top-right
    assert (facts.media_type, facts.codec, facts.width, facts.height) == ("image", "jpeg", 40, 100)
    assert decoded.facts == facts
    rgb = decoded.frames[0].rgb
    assert rgb.shape == (100, 40, 3)
    assert rgb[:10, -10:].mean() > 200 and rgb[:10, :10].mean() < 50


def test_animated_gif_is_decoded_as_video() -> None:
    # Given a 10-frame animated GIF, When 4 frames are sampled
    frames = [Image.new("RGB", (32, 32), (i * 25, 0, 0)) for i in range(10)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=40)
    decoded = decode_sampled(buffer.getvalue(), 4)
    # Then it is a video of 10 frames and the sampled frames are spread over it
    assert (decoded.facts.media_type, decoded.facts.codec, decoded.facts.frame_count) == ("video", "gif", 10)
    assert [f.index for f in decoded.frames] == [0, 3, 6, 9]
    assert decoded.frames[-1].rgb[..., 0].mean() > decoded.frames[0].rgb[..., 0].mean() + 100


# --- bad input ----------------------------------------------------------------------------------


def _code(source: media.MediaSource) -> str:
    with pytest.raises(MediaError) as caught:
        decode_sampled(source, 16)
    return caught.value.code


@pytest.mark.parametrize("as_bytes", [False, True], ids=["path", "bytes"])
def test_zero_bytes_is_empty_media(tmp_path: Path, as_bytes: bool) -> None:
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    assert _code(b"" if as_bytes else path) == "empty_media"


def test_text_is_not_media_and_keeps_the_cause(tmp_path: Path) -> None:
    # Given a text file named like a video, When decoded
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 50)
    with pytest.raises(MediaError) as caught:
        decode_sampled(path)
    # Then it is not_media, chained to PyAV's error
    assert caught.value.code == "not_media"
    assert isinstance(caught.value.__cause__, av.error.FFmpegError)
    assert _code(path) == _code(path.read_bytes()) == "not_media"


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes_are_not_media_or_corrupt(seed: int) -> None:
    noise = np.random.default_rng(seed).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    assert _code(noise) in {"not_media", "corrupt_media"}


def _cut_before_packet(path: Path, k: int) -> bytes:
    """The file's bytes up to where its k-th video packet (decode order) starts: k packets survive."""
    with av.open(str(path)) as container:
        start = container.streams.video[0].index_entries[k].pos
    return path.read_bytes()[:start]


@pytest.mark.parametrize("seek_min_gap", [NEVER_SEEK, ALWAYS_SEEK], ids=["sequential", "seeking"])
def test_mp4_cut_in_half_is_truncated_media(noisy_clip: Path, seek_min_gap: int) -> None:
    # Given a faststart MP4 (index first) cut to half its bytes: the index still declares 120 frames
    data = noisy_clip.read_bytes()
    # When decoded, Then the stream ends near frame 60, under 90 % of the declaration: truncated_media
    with pytest.raises(MediaError) as caught:
        decode_sampled(data[: len(data) // 2], 16, seek_min_gap=seek_min_gap)
    assert caught.value.code == "truncated_media"
    assert "of 120 declared frames" in caught.value.detail


@pytest.mark.parametrize("seek_min_gap", [NEVER_SEEK, ALWAYS_SEEK], ids=["sequential", "seeking"])
def test_truncation_rule_draws_the_line_at_90_percent(
    noisy_clip: Path, read_index: Callable, seek_min_gap: int
) -> None:
    # Given the clip cut after 100 of its 120 packets (< 90 %), and after 115 (> 90 %)
    short, nearly_whole = _cut_before_packet(noisy_clip, 100), _cut_before_packet(noisy_clip, 115)
    # When decoded, Then the first is truncated_media
    with pytest.raises(MediaError) as caught:
        decode_sampled(short, 16, seek_min_gap=seek_min_gap)
    assert caught.value.code == "truncated_media"
    # And the second keeps 16 frames, its last decoded frame standing in for the lost last target
    decoded = decode_sampled(nearly_whole, 16, seek_min_gap=seek_min_gap)
    assert len(decoded.frames) == 16
    assert 108 <= decoded.frames[-1].index < 119
    assert [read_index(f.rgb) for f in decoded.frames] == [f.index for f in decoded.frames]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("seek_min_gap", [NEVER_SEEK, ALWAYS_SEEK], ids=["sequential", "seeking"])
def test_damaged_middle_yields_decodable_frames_or_a_media_error(
    noisy_clip: Path, read_index: Callable, seed: int, seek_min_gap: int
) -> None:
    # Given the MP4 with its middle third overwritten by noise
    data = bytearray(noisy_clip.read_bytes())
    third = len(data) // 3
    data[third : 2 * third] = np.random.default_rng(seed).integers(0, 256, third, dtype=np.uint8).tobytes()
    # When decoded, Then the guarantee holds: a MediaError, or frames in increasing index order,
    # within the declared count, whose undamaged ones (before the damage) show their own index
    try:
        decoded = decode_sampled(bytes(data), 16, seek_min_gap=seek_min_gap)
    except MediaError:
        return
    indices = [f.index for f in decoded.frames]
    assert indices == sorted(set(indices)) and indices[0] >= 0 and indices[-1] < 120
    # and each frame answers its own target: a target lies between any two consecutive frames
    targets = sample_frame_indices(120, 16)
    assert all(any(a < t <= b for t in targets) for a, b in itertools.pairwise(indices))
    assert all(read_index(f.rgb) == f.index for f in decoded.frames if f.index < 30)


def test_audio_only_file_has_no_video_stream(tmp_path: Path) -> None:
    # Given a WAV file, When decoded, Then no_video_stream
    path = tmp_path / "tone.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        samples = (np.sin(np.arange(8000) / 10) * 3000).astype(np.int16)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    assert _code(path) == "no_video_stream"


def test_unknown_codec_is_unsupported_codec(tmp_path: Path) -> None:
    # Given a Matroska file whose video track names a codec FFmpeg does not know
    path = tmp_path / "clip.mkv"
    write_video(path, (np.zeros((16, 16, 3), np.uint8) for _ in range(3)))
    data = path.read_bytes()
    assert data.count(b"V_MPEG4/ISO/AVC") == 1
    # When decoded, Then unsupported_codec
    assert _code(data.replace(b"V_MPEG4/ISO/AVC", b"V_MPEG4/ISO/XYZ")) == "unsupported_codec"


def test_playlist_cannot_make_ffmpeg_read_other_files(tmp_path: Path, clip_120: Path) -> None:
    # Given an HLS playlist upload naming a local video file
    path = tmp_path / "upload.m3u8"
    path.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{clip_120}\n#EXT-X-ENDLIST\n")
    # When decoded, Then FFmpeg may not open the named file: the upload is not media
    assert _code(path) == "not_media"


# --- write_video --------------------------------------------------------------------------------


def test_write_video_streams_frames_instead_of_holding_them(tmp_path: Path) -> None:
    # Given 400 frames produced one at a time (18 MB in all), When written
    tracemalloc.start()
    try:
        write_video(tmp_path / "stream.mp4", (np.full((96, 160, 3), i % 256, np.uint8) for i in range(400)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Then only a few frames were alive at once, and the file holds all 400
    assert peak < 4 * 2**20
    assert probe(tmp_path / "stream.mp4").frame_count == 400


def test_write_video_rejects_odd_sizes_and_size_changes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", [np.zeros((15, 16, 3), np.uint8)])
    with pytest.raises(ValueError, match="changed"):
        write_video(tmp_path / "mixed.mp4", [np.zeros((16, 16, 3), np.uint8), np.zeros((32, 16, 3), np.uint8)])


# --- budgets: refused from the header, large media decoded downscaled -------------------------------------


def _png_header_only(width: int, height: int, idat: bytes = b"") -> bytes:
    """A PNG whose header declares width x height but whose pixel data is missing (or ``idat``): decoding it fails."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + (chunk(b"IDAT", idat) if idat else b"") + chunk(b"IEND", b"")


def _budget_code(source: media.MediaSource, budget: MediaBudget, n_frames: int = 16) -> str:
    with pytest.raises(MediaError) as caught:
        decode_sampled(source, n_frames, budget=budget)
    return caught.value.code


def test_a_one_pixel_png_is_too_small(tmp_path: Path) -> None:
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (200, 10, 10)).save(path)
    assert _budget_code(path, MediaBudget()) == "too_small"
    with pytest.raises(MediaError, match="too_small"):
        probe(path, budget=MediaBudget())
    assert decode_sampled(_png(2, 2)).frames[0].rgb.shape == (2, 2, 3)  # 2x2 is still a picture


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 10)).save(buffer, "PNG")
    return buffer.getvalue()


def test_an_image_over_the_pixel_limit_is_refused_from_its_header_before_decoding() -> None:
    # Given PNGs that declare 12000x12000 and 64x64 but hold no pixel data: decoding either one fails
    bomb, small = _png_header_only(12_000, 12_000), _png_header_only(64, 64, zlib.compress(b"\0" * 100))
    assert _budget_code(small, MediaBudget()) == "truncated_media"
    # When the 144 Mpx one is decoded under the default 100 Mpx limit, or the small one under a 4000 px limit,
    # Then the header alone refuses them: too_many_pixels, not the truncation decoding would find
    assert _budget_code(bomb, MediaBudget()) == "too_many_pixels"
    assert _budget_code(small, MediaBudget(max_image_pixels=4000)) == "too_many_pixels"


def test_an_image_past_pillows_own_bomb_limit_is_too_many_pixels_not_corrupt() -> None:
    # Given a header declaring 400 Mpx, over twice Pillow's limit (Pillow raises instead of opening it)
    with pytest.raises(MediaError) as caught:
        decode_sampled(_png_header_only(20_000, 20_000, b"x"), budget=MediaBudget(max_image_pixels=10**9))
    assert caught.value.code == "too_many_pixels" and "decompression-bomb" in caught.value.detail


@pytest.fixture(scope="module")
def jpeg_13000(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 13000x13000 (169 Mpx) greyscale JPEG: over Pillow's warning limit, under its error limit."""
    path = tmp_path_factory.mktemp("bomb") / "13000.jpg"
    image = Image.new("L", (13_000, 13_000), 128)
    image.paste(255, (0, 0, 6500, 6500))  # the top-left quarter white
    image.save(path, quality=50)
    return path


_PEAK_RSS = """
import sys, warnings
from deepsift.engines.budgets import MediaBudget
from deepsift.engines.errors import MediaError
from deepsift.engines.media import decode_sampled
warnings.simplefilter("ignore")
budget = MediaBudget(max_image_pixels=int(sys.argv[2]), frame_budget_bytes=int(sys.argv[3]))
try:
    decoded = decode_sampled(sys.argv[1], budget=budget)
    rgb = decoded.frames[0].rgb
    print("ok", rgb.shape[1], rgb.shape[0], int(rgb[: rgb.shape[0] // 3, : rgb.shape[1] // 3].mean()), decoded.scale)
except MediaError as e:
    print(e.code)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent (pytest) across fork and exec
print(next(int(line.split()[1]) // 1024 for line in open("/proc/self/status") if line.startswith("VmHWM")))
"""


def _decode_in_fresh_process(path: Path, max_image_pixels: int, frame_budget_bytes: int) -> tuple[list[str], int]:
    args = [sys.executable, "-c", _PEAK_RSS, str(path), str(max_image_pixels), str(frame_budget_bytes)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[3])
    assert result.returncode == 0, result.stderr
    *verdict, peak_mb = result.stdout.split()
    return verdict, int(peak_mb)


def test_the_13000_pixel_jpeg_is_refused_without_decoding_it(jpeg_13000: Path) -> None:
    # Given the 169 Mpx JPEG (507 MB as RGB), When decoded under the default budget in a fresh process
    verdict, peak_mb = _decode_in_fresh_process(jpeg_13000, 100_000_000, 1 << 30)
    # Then it is too_many_pixels, and the process never grew by anything like one decoded copy
    assert verdict == ["too_many_pixels"]
    assert peak_mb < 150


def test_a_jpeg_over_the_frame_budget_is_decoded_at_reduced_scale_by_libjpeg(jpeg_13000: Path) -> None:
    # Given a budget that allows the 169 Mpx JPEG but keeps only 3 MB of frame (about 1000x1000)
    verdict, peak_mb = _decode_in_fresh_process(jpeg_13000, 200_000_000, 3_000_000)
    # Then it is judged, kept at the budget's size with its content in place (white top-left quarter)
    status, width, height, top_left, scale = verdict
    assert (
        status == "ok"
        and int(width) == int(height) == MediaBudget(frame_budget_bytes=3_000_000).kept_size(13_000, 13_000, 1)[0]
    )
    assert int(top_left) > 240 and float(scale) == pytest.approx(int(width) / 13_000)
    # and libjpeg decoded it at 1/8 scale: far below one full-size decode (169 MB even as greyscale)
    assert peak_mb < 150


def test_an_image_over_the_frame_budget_keeps_its_orientation_and_true_size(jpeg_exif_rotated: bytes) -> None:
    # Given the 100x40 JPEG shown turned (40 wide, 100 high), When kept at half its pixels per side
    decoded = decode_sampled(jpeg_exif_rotated, budget=MediaBudget(frame_budget_bytes=20 * 50 * 3))
    rgb = decoded.frames[0].rgb
    # Then the frame is 20x50, upright (block top-right), the facts say 40x100 and the scale 0.5
    assert rgb.shape == (50, 20, 3) and rgb[:5, -5:].mean() > 200 and rgb[:5, :5].mean() < 50
    assert (decoded.facts.width, decoded.facts.height, decoded.scale) == (40, 100, 0.5)


def test_a_photo_downscaled_by_the_budget_matches_the_full_decode_resized() -> None:
    from skimage import data

    photo = np.asarray(Image.fromarray(data.astronaut()).resize((1600, 1600)))
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, "JPEG", quality=95)
    full = decode_sampled(buffer.getvalue()).frames[0].rgb
    small = decode_sampled(buffer.getvalue(), budget=MediaBudget(frame_budget_bytes=400 * 400 * 3)).frames[0].rgb
    assert small.shape == (400, 400, 3)
    expected = np.asarray(Image.fromarray(full).resize((400, 400), Image.Resampling.BILINEAR))
    assert np.abs(small.astype(int) - expected).mean() < 3


@pytest.mark.parametrize(
    "budget, code",
    [
        (MediaBudget(max_frame_pixels=160 * 96 - 1), "too_many_pixels"),
        (MediaBudget(max_video_pixels=120 * 160 * 96 - 1), "too_many_pixels"),
        (MediaBudget(max_duration_s=4.0), "too_long"),  # the clip lasts 4.8 s
        (MediaBudget(min_side=97), "too_small"),
    ],
)
def test_a_video_over_a_limit_is_refused_from_its_header_before_any_frame_is_decoded(
    clip_120: Path, budget: MediaBudget, code: str
) -> None:
    # Given the clip's header with none of its frames (cut before the first packet): decoding it fails
    header_only = _cut_before_packet(clip_120, 0)
    assert _budget_code(header_only, MediaBudget()) in {"corrupt_media", "truncated_media"}
    # When decoded or probed over a limit, Then the header alone answers, with the limit's code
    assert _budget_code(header_only, budget) == code
    for probe_with_budget in (probe, media.probe_timing):
        with pytest.raises(MediaError) as caught:
            probe_with_budget(header_only, budget=budget)
        assert caught.value.code == code


@pytest.fixture(scope="module")
def clip_4k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six 3840x2160 frames of a phone-style clip: the astronaut, panning."""
    from skimage import data

    portrait = np.asarray(Image.fromarray(data.astronaut()).resize((2160, 2160)))
    frame = np.zeros((2160, 3840, 3), np.uint8)
    frame[:, 840:3000] = portrait
    path = tmp_path_factory.mktemp("4k") / "4k.mp4"
    write_video(path, (np.roll(frame, 40 * t, axis=1) for t in range(6)), fps=30.0)
    return path


def test_a_4k_clip_under_a_small_budget_is_decoded_downscaled_to_fit(clip_4k: Path) -> None:
    # Given a 12 MB frame budget for 6 frames of 3840x2160 (149 MB at full size)
    budget = MediaBudget(frame_budget_bytes=12 << 20)
    tracemalloc.start()
    try:
        decoded = decode_sampled(clip_4k, 6, budget=budget)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Then the six frames fit the budget together, keep the 16:9 aspect, and the facts keep the true size
    shapes = {f.rgb.shape for f in decoded.frames}
    assert len(decoded.frames) == 6 and shapes == {(*budget.kept_size(3840, 2160, 6)[::-1], 3)}
    (shape,) = shapes
    assert 6 * shape[0] * shape[1] * 3 <= budget.frame_budget_bytes and shape[1] / shape[0] == pytest.approx(
        16 / 9, rel=0.01
    )
    assert (decoded.facts.width, decoded.facts.height) == (3840, 2160)
    assert decoded.scale == pytest.approx(shape[1] / 3840)
    # and no full-size RGB frame was ever made: the peak is the kept frames and one more in flight
    assert peak < budget.frame_budget_bytes * 1.5
    # and the pixels are the full decode, resized
    full = decode_sampled(clip_4k, 6).frames[3].rgb
    expected = np.asarray(Image.fromarray(full).resize(shape[1::-1], Image.Resampling.BILINEAR))
    assert np.abs(decoded.frames[3].rgb.astype(int) - expected).mean() < 3


def test_a_rotated_clip_under_a_budget_is_upright_and_downscaled(rotated_clip: Path) -> None:
    # Given the 160x96 clip shown turned (96 wide, 160 high), When 2 frames are kept at half their side
    decoded = decode_sampled(rotated_clip, 2, budget=MediaBudget(frame_budget_bytes=2 * 80 * 48 * 3))
    rgb = decoded.frames[0].rgb
    # Then the frames are 48 wide, 80 high, the band on the left, and the facts are the upright true size
    assert rgb.shape == (80, 48, 3) and rgb[:, :3].mean() > 200 and rgb[:, -4:].mean() < 30
    assert (decoded.facts.width, decoded.facts.height, decoded.scale) == (96, 160, 0.5)
