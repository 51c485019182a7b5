"""Media probe and sampled-frame decode on the CPU: PIL for still images, PyAV for everything else.

Both the trainer's data preparation and the daemon decode through this module (the ``pyav`` entry of
``engines.decoders``; DALI's decoder falls back to it), so a model sees the same pixels in training and in service.
Only the sampled frames are ever held in memory. Images are read in ``_images``, videos in ``_pyav_video``.

Sampling rule: ``n`` target indices are spread evenly over the video (``sample_frame_indices``);
for each, the first frame whose index (from its timestamp and the stream's fps) is at or after the
target is kept. When the targets lie more than ``seek_min_gap`` frames apart (``should_seek``),
each one is reached by seeking to the keyframe before it, unless the container's index shows that
keyframe is not past the frame decoded last; otherwise the video is read through once. Seeking
restarts decoding at a keyframe, so it only saves work when targets are further apart than a
typical keyframe interval (phones put one every 1–2 s, i.e. 30–60 frames).

Truncation rule: the container declares a frame count (or a duration, giving ``duration * fps``).
When the stream ends before the last target and the frames reached cover less than
``TRUNCATION_COVERAGE`` (90 %) of that declaration, the media is ``truncated_media`` (or
``corrupt_media`` when a demuxer error, not a clean end, stopped it). When they cover at least
90 %, the declaration was merely optimistic (estimated counts overshoot by a few frames): the last
decoded frame stands in for the missing targets, once.

Budgets (``engines.budgets.MediaBudget``): every decoder is handed the job's budget and checks it against the
header facts before it decodes a frame, so a pixel or length bomb is a ``too_many_pixels``, ``too_long`` or
``too_small`` error, never a large allocation. Sampled frames that would not fit the frame budget together are
decoded straight to a smaller size (swscale for video; libjpeg's reduced-scale decode, then a resize, for
JPEG); ``MediaFacts`` still report the media's true size and ``DecodedMedia.scale`` how far frames were shrunk.
The decoder's frame threads are capped by frame size, and FFmpeg refuses frames over ``max_frame_pixels`` even
when a stream grows after its header.

Damage: packets that fail to decode are skipped (FFmpeg conceals what it can), and a target whose
frames were lost is skipped, so damaged media may yield fewer frames than asked for. No decodable
frame at all is ``corrupt_media``. Every failure on bad input is a ``MediaError``, never a raw
PyAV or PIL error.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from deepsift.engines._images import ANIMATED_AS_VIDEO, IMAGE_FORMATS, decode_image, open_image, probe_image
from deepsift.engines._media_types import DecodedMedia, MediaFacts, MediaSource, SampledFrame, open_source
from deepsift.engines._pyav_video import (
    SEEK_MIN_GAP_FRAMES,
    TRUNCATION_COVERAGE,
    decode_video,
    packet_times,
    probe_video,
    sample_frame_indices,
    should_seek,
)
from deepsift.engines.budgets import MediaBudget

__all__ = [
    "ANIMATED_AS_VIDEO",
    "DEFAULT_BUDGET",
    "IMAGE_FORMATS",
    "SEEK_MIN_GAP_FRAMES",
    "TRUNCATION_COVERAGE",
    "DecodedMedia",
    "MediaFacts",
    "MediaSource",
    "SampledFrame",
    "VideoTiming",
    "decode_sampled",
    "probe",
    "probe_timing",
    "sample_frame_indices",
    "should_seek",
    "write_video",
]

DEFAULT_BUDGET = MediaBudget()


def probe(source: MediaSource, budget: MediaBudget | None = None) -> MediaFacts:
    """Facts about the media from its headers (and, for video, its first frame's display rotation).

    With a ``budget``, media over it raises its ``MediaError`` from the headers, before that first frame is decoded.
    """
    src = open_source(source)
    image = open_image(src)
    if image is not None:
        return probe_image(image, src.size, budget)
    return probe_video(src, budget).facts


@dataclass(frozen=True)
class VideoTiming:
    """What another decoder must know before it is trusted with a video, read by demuxing (no decode but one frame).

    ``frame_times_s`` holds the presentation time of every timed packet of the first video stream, ascending;
    it is empty for a still image and when the scan was skipped (a video longer than the caller's limit).
    """

    facts: MediaFacts
    video_streams: int
    pixel_format: str | None
    rotation: int  # display rotation of the first frame, degrees counter-clockwise (as ``probe`` reads it)
    start_s: float  # the stream's first timestamp: frame index 0 of the sampling rule
    frame_times_s: tuple[float, ...]
    untimed_packets: int = 0

    def frames_in_order(self) -> bool:
        """Whether the n-th frame in presentation order is frame n of the sampling rule (its timestamp index).

        True of constant-frame-rate video without gaps: a decoder that counts frames then returns the frames
        this module's decoder returns. Variable frame rate, dropped frames and missing timestamps make it false.
        """
        fps, times = self.facts.fps, self.frame_times_s
        if not fps or not times or self.untimed_packets:
            return False
        return all(round((t - self.start_s) * fps) == i for i, t in enumerate(times))


def probe_timing(
    source: MediaSource, max_duration_s: float | None = None, budget: MediaBudget | None = None
) -> VideoTiming:
    """``probe``'s facts plus the stream facts and packet timestamps a decoder router needs.

    The packet scan reads the whole container without decoding; it is skipped (no ``frame_times_s``) for a video
    whose declared duration exceeds ``max_duration_s``, or is unknown while a limit is set. With a ``budget``,
    media over it raises its ``MediaError`` from the headers, before any frame is decoded or packet scanned.
    """
    src = open_source(source)
    image = open_image(src)
    if image is not None:
        return VideoTiming(probe_image(image, src.size, budget), 0, None, 0, 0.0, ())
    header = probe_video(src, budget)
    facts = header.facts
    too_long = max_duration_s is not None and (facts.duration_s is None or facts.duration_s > max_duration_s)
    times, untimed = ((), 0) if too_long else packet_times(src)
    return VideoTiming(
        facts, header.video_streams, header.pixel_format, header.rotation, header.start_s, times, untimed
    )


def decode_sampled(
    source: MediaSource,
    n_frames: int = 32,
    *,
    budget: MediaBudget = DEFAULT_BUDGET,
    seek_min_gap: int = SEEK_MIN_GAP_FRAMES,
) -> DecodedMedia:
    """Decode ``n_frames`` evenly spaced frames (one for an image), upright RGB, holding no others.

    Media over ``budget`` is refused from its header (``too_many_pixels``, ``too_long``, ``too_small``) before any
    frame is decoded; frames that would not fit its frame budget together are decoded downscaled to fit.
    ``seek_min_gap`` is the target spacing (in frames) above which targets are fetched by seeking.
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    src = open_source(source)
    image = open_image(src)
    if image is not None:
        return decode_image(image, src.size, budget)
    return decode_video(src, n_frames, seek_min_gap, budget)


def write_video(
    path: str | os.PathLike[str],
    frames: Iterable[np.ndarray],
    fps: float = 25.0,
    codec: str = "libx264",
    crf: int = 23,
    faststart: bool = True,
    *,
    display_rotation: int = 0,
    keyframe_interval: int | None = None,
) -> None:
    """Encode RGB uint8 frames (all of one even size) to a video file, one frame in memory at a time.

    ``faststart`` moves the MP4 index to the front, as upload-friendly encoders do;
    ``display_rotation`` (degrees counter-clockwise) records a phone-style display matrix;
    ``keyframe_interval`` (frames) overrides the encoder's default GOP length (x264: 250).
    """
    iterator = iter(frames)
    first = next(iterator, None)
    if first is None:
        raise ValueError("write_video needs at least one frame")
    height, width = _check_frame(first, None)
    is_mp4 = os.fspath(path).lower().endswith((".mp4", ".mov", ".m4v"))
    options = {"movflags": "+faststart"} if faststart and is_mp4 else {}
    with av.open(os.fspath(path), mode="w", options=options) as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001 * 1000))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec in {"libx264", "libx265", "libvpx-vp9", "libsvtav1"}:
            stream.options = {"crf": str(crf)}
        if keyframe_interval:
            stream.codec_context.gop_size = keyframe_interval
        if display_rotation:
            stream.set_display_rotation(display_rotation)
        for pts, rgb in enumerate(_chain_first(first, iterator)):
            _check_frame(rgb, (height, width))
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = pts
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _chain_first(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def _check_frame(rgb: np.ndarray, size: tuple[int, int] | None) -> tuple[int, int]:
    """Reject frames yuv420p cannot hold or that change size mid-stream."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"frames must be H x W x 3 uint8 RGB, got {rgb.dtype} {rgb.shape}")
    height, width = rgb.shape[:2]
    if size is None and (height % 2 or width % 2):
        raise ValueError(f"yuv420p needs an even frame size, got {width}x{height}")
    if size is not None and (height, width) != size:
        raise ValueError(f"frame size changed from {size[1]}x{size[0]} to {width}x{height}")
    return height, width
