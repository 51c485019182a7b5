"""Media probe and sampled-frame decode on the CPU: PIL for still images, PyAV for everything else.

Both the trainer's data preparation and the daemon decode through this module, so a model sees
the same pixels in training and in service. Only the sampled frames are ever held in memory.

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

import functools
import io
import math
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import TYPE_CHECKING, BinaryIO, Protocol

import av
import av.error
import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from deepsift.engines.budgets import MediaBudget, decoder_threads
from deepsift.engines.errors import MediaError
from deepsift.engines.registry import Registry

if TYPE_CHECKING:
    import torch

MediaSource = str | os.PathLike[str] | bytes

SEEK_MIN_GAP_FRAMES = 64
TRUNCATION_COVERAGE = 0.9
# Formats PIL may claim; anything else goes to PyAV. A closed list stops PIL's lenient probes
# (TGA, ...) from claiming random bytes as an image.
# (JPEG covers MPO, the multi-picture JPEG of some cameras.)
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
# Animated images in these formats are decoded as video by PyAV; others keep their first frame.
# (FFmpeg cannot decode animated WebP, so PIL keeps its first frame.)
ANIMATED_AS_VIDEO = frozenset({"GIF", "PNG"})
# Demuxers such as HLS open the files or URLs an upload names; allowing no protocol confines
# FFmpeg to the bytes handed to it (the main input is read through Python, not a protocol).
_NO_NESTED_INPUTS = {"protocol_whitelist": "none"}
_ROTATING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height
IMAGE_BAND_BYTES = 16 << 20  # rows converted to RGB at a time when an image becomes an array

DEFAULT_BUDGET = MediaBudget()


class Decoder(Protocol):
    def __call__(self, source: MediaSource, n_frames: int = 32, *, budget: MediaBudget = ...) -> DecodedMedia:
        """``n_frames`` sampled frames, upright RGB, refused or downscaled as ``budget`` says before decoding."""
        ...


DECODERS: Registry[Decoder] = Registry("decoder")


@dataclass(frozen=True)
class MediaFacts:
    """What a verdict records about the media; width and height are the upright (displayed) size."""

    media_type: str
    container: str | None
    codec: str | None
    width: int
    height: int
    fps: float | None
    duration_s: float | None
    frame_count: int | None
    size_bytes: int


@dataclass(frozen=True)
class SampledFrame:
    index: int
    pts_s: float | None
    rgb: np.ndarray | torch.Tensor  # H×W×3 uint8; a CUDA tensor when a GPU decoder (DALI) made it


@dataclass(frozen=True)
class DecodedMedia:
    facts: MediaFacts
    frames: tuple[SampledFrame, ...]
    decoder: str = "pyav"  # the decoder that produced the frames
    fallback_reason: str | None = None  # why a preferred decoder (DALI) was not used, when it was not
    scale: float = 1.0  # kept frames' width over the media's: below 1 when the frame budget downscaled them


# --- sources ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    """Media bytes or a path, re-openable as a fresh file object (PIL and PyAV each read it)."""

    data: bytes | None
    path: str | None
    size: int

    def open(self) -> BinaryIO:
        return io.BytesIO(self.data) if self.data is not None else open(self.path, "rb")


def _source(source: MediaSource) -> _Source:
    """Wrap a source; paths are read by Python so FFmpeg never interprets a name as a URL/protocol."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        src = _Source(data=data, path=None, size=len(data))
    else:
        path = os.fspath(source)
        src = _Source(data=None, path=path, size=os.stat(path).st_size)
    if src.size == 0:
        raise MediaError("empty_media", "the media has 0 bytes")
    return src


# --- sampling -----------------------------------------------------------------------------------


def sample_frame_indices(frame_count: int, n: int) -> list[int]:
    """``n`` evenly spaced frame indices over the whole video, first and last included."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if frame_count <= n:
        return list(range(max(frame_count, 0)))
    return sorted({int(i) for i in np.rint(np.linspace(0, frame_count - 1, n))})


def should_seek(frame_count: int, n_frames: int, seek_min_gap: int = SEEK_MIN_GAP_FRAMES) -> bool:
    """Whether the sampled targets are far enough apart for seeking to beat reading through."""
    return n_frames > 1 and (frame_count - 1) / (n_frames - 1) > seek_min_gap


# --- images -------------------------------------------------------------------------------------


@functools.cache
def _image_formats() -> tuple[str, ...]:
    """The formats of ``IMAGE_FORMATS`` this Pillow build can open (WebP support is optional)."""
    Image.init()
    return tuple(fmt for fmt in IMAGE_FORMATS if fmt in Image.OPEN)


def _open_image(src: _Source) -> Image.Image | None:
    """The still image in ``src``, or None when PIL does not claim it (or it is an animation)."""
    try:  # PIL opens (and on failure closes) a path itself, so no file handle leaks
        image = Image.open(src.path or io.BytesIO(src.data), formats=_image_formats())
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # the warning: under ``-W error``
        raise MediaError("too_many_pixels", f"image exceeds Pillow's decompression-bomb limit: {e}") from e
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None
    if getattr(image, "is_animated", False) and image.format in ANIMATED_AS_VIDEO:
        image.close()
        return None
    return image


def _upright_size(image: Image.Image) -> tuple[int, int]:
    """Width and height after EXIF orientation, read from the header without decoding pixels."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # PIL raises many types on a malformed EXIF block; the pixels may still be fine
        orientation = 1
    width, height = image.size
    return (height, width) if orientation in _ROTATING_ORIENTATIONS else (width, height)


def _image_facts(image: Image.Image, size: int) -> MediaFacts:
    width, height = _upright_size(image)
    fmt = image.format or None
    codec = fmt.lower() if fmt else None
    return MediaFacts("image", fmt, codec, width, height, None, None, 1, size)


def _image_rgb(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Decode the pixels upright (EXIF orientation applied) as RGB uint8 of ``size`` (upright width, height).

    At full size the image is decoded as it is. Smaller (the frame budget), a JPEG is decoded by libjpeg at the
    largest of 1/2, 1/4, 1/8 scale that is not below ``size`` (``draft``), then resized down (antialiased).
    """
    try:
        if size != _upright_size(image) and image.format in ("JPEG", "MPO"):
            stored = size if image.size == _upright_size(image) else size[::-1]
            image.draft("RGB", stored)
        image.load()
        ImageOps.exif_transpose(image, in_place=True)  # in place: no second full-size copy
        if image.size != size:
            return _rgb_array(image.convert("RGB").resize(size, Image.Resampling.BILINEAR))
        return _rgb_array(image)
    except Exception as e:  # PIL's decoders raise OSError, ValueError, SyntaxError, struct.error...
        code = "truncated_media" if "truncated" in str(e) else "corrupt_media"
        raise MediaError(code, f"cannot decode {image.format} image: {e}") from e


def _rgb_array(image: Image.Image) -> np.ndarray:
    """The decoded image as an RGB uint8 array, converted band by band: beside Pillow's own 4-byte pixels only the
    array itself is held (≈ 7 bytes per pixel in all), not a converted copy and an export buffer as well."""
    width, height = image.size
    rgb = np.empty((height, width, 3), np.uint8)
    rows = max(1, IMAGE_BAND_BYTES // (4 * width))
    for top in range(0, height, rows):
        band = image.crop((0, top, width, min(top + rows, height)))
        rgb[top : top + rows] = np.asarray(band if band.mode == "RGB" else band.convert("RGB"))
    return rgb


def _decode_image(image: Image.Image, size: int, budget: MediaBudget) -> DecodedMedia:
    """The image as one frame, refused from its header when over the budget, downscaled when over the frame budget.

    The facts keep the image's true (upright) size; ``scale`` says how far the kept frame was shrunk.
    """
    with image:
        facts = _image_facts(image, size)
        budget.check(facts)
        rgb = _image_rgb(image, budget.kept_size(facts.width, facts.height, 1))
    frame = SampledFrame(index=0, pts_s=None, rgb=rgb)
    return DecodedMedia(facts, (frame,), scale=rgb.shape[1] / facts.width)


# --- video: container and facts -----------------------------------------------------------------


@contextmanager
def _open_video(src: _Source) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    """Open the container and its first video stream, mapping failures to ``MediaError``."""
    with src.open() as fp:
        try:
            container = av.open(fp, mode="r", metadata_errors="ignore", container_options=_NO_NESTED_INPUTS)
        except av.error.FFmpegError as e:
            raise MediaError("not_media", f"no demuxer recognises the data: {e}") from e
        try:
            yield container, _video_stream(container)
        finally:
            container.close()


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    if not container.streams:
        raise MediaError("corrupt_media", f"the {container.format.name} container holds no streams")
    if not container.streams.video:
        kinds = ", ".join(sorted({s.type for s in container.streams}))
        raise MediaError("no_video_stream", f"the container holds only {kinds} streams")
    stream = container.streams.video[0]
    context = stream.codec_context
    if context is None or context.codec is None or not context.codec.is_decoder:
        raise MediaError("unsupported_codec", f"no decoder for video stream codec {_codec_name(stream)!r}")
    stream.thread_type = "AUTO"
    return stream


def _codec_name(stream: av.video.stream.VideoStream) -> str:
    try:
        return stream.codec_context.name
    except Exception:  # a stream whose codec FFmpeg does not know has no usable context
        return "unknown"


def _stream_fps(stream: av.video.stream.VideoStream) -> float | None:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else None


def _stream_duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


def _count_packets(src: _Source) -> int:
    """Frame count of a container that declares neither count nor duration: demux without decoding."""
    with _open_video(src) as (container, stream):
        try:
            return sum(1 for packet in container.demux(stream) if packet.size)
        except av.error.FFmpegError as e:
            raise MediaError("corrupt_media", f"cannot demux the video stream: {e}") from e


def _video_facts(src: _Source, container: av.container.InputContainer) -> MediaFacts:
    """The stream's facts from its headers, in coded orientation (``_upright`` turns them); no frame is decoded."""
    stream = container.streams.video[0]
    fps = _stream_fps(stream)
    duration = _stream_duration(container, stream)
    frame_count = stream.frames or (round(duration * fps) if duration and fps else None)
    if not frame_count:
        frame_count = _count_packets(src)
        duration = duration or (frame_count / fps if fps else None)
    width, height = stream.codec_context.width, stream.codec_context.height
    codec = _codec_name(stream)
    return MediaFacts("video", container.format.name, codec, width, height, fps, duration, frame_count, src.size)


def _upright(facts: MediaFacts, rotation: int) -> MediaFacts:
    """The facts as displayed: width and height swapped for a quarter-turn display rotation."""
    return replace(facts, width=facts.height, height=facts.width) if rotation % 180 else facts


def _bound_decoder(stream: av.video.stream.VideoStream, facts: MediaFacts, budget: MediaBudget | None) -> None:
    """Cap the decoder's memory before it opens: frame threads by frame size, and (with a budget) no frame over
    its ``max_frame_pixels`` even when the stream changes size after its header (FFmpeg's ``max_pixels``)."""
    context = stream.codec_context
    context.thread_count = decoder_threads(facts.width, facts.height)
    if budget is not None:
        context.options = {**context.options, "max_pixels": str(int(budget.max_frame_pixels))}


# --- video: decoding ----------------------------------------------------------------------------


@dataclass
class _Scan:
    """What a decode pass found: the kept samples, how far it got, and what stopped it early."""

    start_s: float  # the stream's first timestamp: frame index 0
    fps: float | None  # None when the stream has no timing: frames are then indexed by decode order
    max_pixels: int | None = None  # a kept frame's pixels at most (the frame budget's share); None: full size
    found: list[SampledFrame] = field(default_factory=list)
    last: SampledFrame | None = None  # the last frame decoded: a stand-in for targets past the end
    reached: int = 0  # one past the highest frame index decoded
    decoded: int = 0
    bad_packets: int = 0  # packets skipped because they failed to decode
    stopped_by: av.error.FFmpegError | None = None  # a demux/decode error that ended the pass
    rotation: int = 0  # display rotation of the first decoded frame, degrees counter-clockwise
    coded_size: tuple[int, int] = (0, 0)  # width and height of the first decoded frame, before rotation
    last_raw: tuple[av.VideoFrame, int] | None = None  # turned into ``last`` only at the end

    def index_of(self, frame: av.VideoFrame) -> int:
        """The frame's index in the video: from its timestamp, or its decode order without timing."""
        if self.fps and frame.time is not None:
            return round((frame.time - self.start_s) * self.fps)
        return self.decoded

    def keep(self, frame: av.VideoFrame, index: int, wanted: bool) -> None:
        """Record a decoded frame; convert it to RGB only when it is a target."""
        if wanted:
            self.found.append(_sampled(frame, index, self.max_pixels))
        if not self.decoded:
            self.rotation, self.coded_size = round(frame.rotation or 0), (frame.width, frame.height)
        self.reached = max(self.reached, index + 1)
        self.decoded += 1
        self.last_raw = (frame, index)

    def settle(self) -> None:
        """Turn the last decoded frame into a sample, reusing the target sample when it is one."""
        if self.last_raw is None:
            return
        frame, index = self.last_raw
        if self.found and self.found[-1].index == index:
            self.last = self.found[-1]
        else:
            self.last = _sampled(frame, index, self.max_pixels)
        self.last_raw = None


def _decoded_frames(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, scan: _Scan
) -> Iterator[av.VideoFrame]:
    """Frames in presentation order; packets that fail to decode are skipped, demux errors propagate."""
    for packet in container.demux(stream):
        try:
            yield from packet.decode()
        except av.error.InvalidDataError:
            scan.bad_packets += 1


def _upright_rgb(frame: av.VideoFrame, max_pixels: int | None = None) -> np.ndarray:
    """RGB uint8 pixels with the container's display rotation applied, as a viewer shows them.

    A frame over ``max_pixels`` is converted straight to a smaller RGB frame of the same aspect ratio (swscale,
    bilinear), so no full-size RGB copy is ever made.
    """
    width, height = frame.width, frame.height
    if max_pixels is not None and width * height > max_pixels:
        scale = math.sqrt(max_pixels / (width * height))
        width, height = max(1, math.floor(width * scale)), max(1, math.floor(height * scale))
        rgb = frame.to_ndarray(width=width, height=height, format="rgb24")
    else:
        rgb = frame.to_ndarray(format="rgb24")
    quarter_turns = round((frame.rotation or 0) / 90) % 4
    if quarter_turns:
        rgb = np.rot90(rgb, k=quarter_turns)
    return np.ascontiguousarray(rgb)


def _sampled(frame: av.VideoFrame, index: int, max_pixels: int | None = None) -> SampledFrame:
    return SampledFrame(index=index, pts_s=frame.time, rgb=_upright_rgb(frame, max_pixels))


def _scan_targets(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    targets: list[int],
    seek: bool,
    max_pixels: int | None = None,
) -> _Scan:
    """Decode the first frame at or after each target, in order, reading forward or seeking.

    With ``seek``, each target is reached by seeking to the keyframe before it, unless the
    container's index shows that keyframe is not past the frame decoded last (seeking would only
    decode the same frames again). A target already passed (a frame lost to damage, or two
    targets on one frame) is skipped.
    """
    scan = _Scan(float((stream.start_time or 0) * stream.time_base), _stream_fps(stream), max_pixels)
    frames = None
    try:
        for target in targets:
            if scan.reached > target:
                continue
            if frames is None or (seek and not _keyframe_already_passed(stream, target, scan)):
                frames = _seek(container, stream, target, scan) if seek else _decoded_frames(container, stream, scan)
            if not _decode_until(frames, target, scan):
                break
    except av.error.FFmpegError as e:
        scan.stopped_by = e
    scan.settle()
    return scan


def _seek(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, target: int, scan: _Scan
) -> Iterator[av.VideoFrame]:
    """Seek to the keyframe at or before the target's timestamp and return the frames from there."""
    container.seek(_target_pts(stream, target, scan), backward=True, any_frame=False, stream=stream)
    return _decoded_frames(container, stream, scan)


def _target_pts(stream: av.video.stream.VideoStream, target: int, scan: _Scan) -> int:
    """The earliest timestamp (in stream time base) that rounds to frame index ``target``."""
    return int((scan.start_s + (target - 0.5) / scan.fps) / stream.time_base)


def _keyframe_already_passed(stream: av.video.stream.VideoStream, target: int, scan: _Scan) -> bool:
    """Whether the index's keyframe before the target is at or before the frame decoded last."""
    if scan.last_raw is None or scan.last_raw[0].time is None:
        return False
    entries = stream.index_entries
    at = entries.search_timestamp(_target_pts(stream, target, scan)) if entries else -1
    return at >= 0 and entries[at].timestamp * stream.time_base <= scan.last_raw[0].time


def _decode_until(frames: Iterator[av.VideoFrame], target: int, scan: _Scan) -> bool:
    """Decode forward to the first frame whose index is at least ``target`` and keep it.

    Returns False when the stream ends first.
    """
    for frame in frames:
        index = scan.index_of(frame)
        scan.keep(frame, index, wanted=index >= target)
        if index >= target:
            return True
    return False


def _finish(scan: _Scan, targets: list[int], frame_count: int) -> tuple[SampledFrame, ...]:
    """Apply the truncation rule to what a decode pass found (see the module docstring)."""
    if scan.last is None:
        reason = scan.stopped_by or f"{scan.bad_packets} packets failed to decode"
        raise MediaError("corrupt_media", f"no frame could be decoded: {reason}") from scan.stopped_by
    if scan.reached > targets[-1]:
        return tuple(scan.found)
    if scan.reached < TRUNCATION_COVERAGE * frame_count:
        code = "corrupt_media" if scan.stopped_by else "truncated_media"
        detail = f"the stream ends after {scan.reached} of {frame_count} declared frames"
        raise MediaError(code, detail + (f": {scan.stopped_by}" if scan.stopped_by else "")) from scan.stopped_by
    if not scan.found or scan.last.index > scan.found[-1].index:
        return (*scan.found, scan.last)
    return tuple(scan.found)


def _decode_video(src: _Source, n_frames: int, seek_min_gap: int, budget: MediaBudget) -> DecodedMedia:
    """Sampled frames of a video whose header passed the budget, each kept at most at the frame budget's share.

    The facts keep the video's true (upright) size; ``scale`` says how far the kept frames were shrunk.
    """
    with _open_video(src) as (container, stream):
        facts = _video_facts(src, container)
        budget.check(facts)  # from the header: nothing is decoded yet
        targets = sample_frame_indices(facts.frame_count, n_frames)
        if not targets:
            raise MediaError("corrupt_media", "the video stream holds no frames")
        max_pixels = budget.frame_pixels(len(targets))
        seek = bool(facts.fps) and should_seek(facts.frame_count, n_frames, seek_min_gap)
        _bound_decoder(stream, facts, budget)
        scan = _scan_targets(container, stream, targets, seek, max_pixels)
    if seek and scan.last is None and scan.stopped_by is not None:  # seeking failed: read through instead
        with _open_video(src) as (container, stream):
            _bound_decoder(stream, facts, budget)
            scan = _scan_targets(container, stream, targets, False, max_pixels)
    frames = _finish(scan, targets, facts.frame_count)
    if not (facts.width and facts.height):  # the header left the size unknown: the first frame tells it
        facts = replace(facts, width=scan.coded_size[0], height=scan.coded_size[1])
    facts = _upright(facts, scan.rotation)
    return DecodedMedia(facts, frames, scale=frames[0].rgb.shape[1] / facts.width)


# --- public API ---------------------------------------------------------------------------------


def probe(source: MediaSource, budget: MediaBudget | None = None) -> MediaFacts:
    """Facts about the media from its headers (and, for video, its first frame's display rotation).

    With a ``budget``, media over it raises its ``MediaError`` from the headers, before that first frame is decoded.
    """
    src = _source(source)
    image = _open_image(src)
    if image is not None:
        with image:
            facts = _image_facts(image, src.size)
        if budget is not None:
            budget.check(facts)
        return facts
    with _open_video(src) as (container, stream):
        facts = _video_facts(src, container)
        if budget is not None:
            budget.check(facts)
        _bound_decoder(stream, facts, budget)
        return _upright(facts, _first_rotation(container, stream))


def _first_rotation(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int:
    """The display rotation of the first decodable frame; 0 when none decodes (decode reports that)."""
    try:
        frame = next(_decoded_frames(container, stream, _Scan(start_s=0.0, fps=None)), None)
    except av.error.FFmpegError:
        return 0
    return round(frame.rotation or 0) if frame is not None else 0


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
    src = _source(source)
    image = _open_image(src)
    if image is not None:
        with image:
            facts = _image_facts(image, src.size)
        if budget is not None:
            budget.check(facts)
        return VideoTiming(facts, 0, None, 0, 0.0, ())
    with _open_video(src) as (container, stream):
        facts = _video_facts(src, container)
        if budget is not None:
            budget.check(facts)
        _bound_decoder(stream, facts, budget)
        rotation = _first_rotation(container, stream)
        facts = _upright(facts, rotation)
        video_streams, pixel_format = len(container.streams.video), stream.codec_context.pix_fmt
        start_s = float((stream.start_time or 0) * stream.time_base)
    too_long = max_duration_s is not None and (facts.duration_s is None or facts.duration_s > max_duration_s)
    times, untimed = ((), 0) if too_long else _packet_times(src)
    return VideoTiming(facts, video_streams, pixel_format, rotation, start_s, times, untimed)


def _packet_times(src: _Source) -> tuple[tuple[float, ...], int]:
    """Presentation times of the first video stream's packets, ascending, and how many packets had none."""
    with _open_video(src) as (container, stream):
        try:
            pts = [packet.pts for packet in container.demux(stream) if packet.size]
        except av.error.FFmpegError as e:
            raise MediaError("corrupt_media", f"cannot demux the video stream: {e}") from e
        time_base = stream.time_base
    timed = sorted(float(p * time_base) for p in pts if p is not None)
    return tuple(timed), len(pts) - len(timed)


@DECODERS.register("pyav")
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
    src = _source(source)
    image = _open_image(src)
    if image is not None:
        return _decode_image(image, src.size, budget)
    return _decode_video(src, n_frames, seek_min_gap, budget)


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


# The "dali" and "auto" decoders register themselves; nothing GPU-related is imported until one is used.
from deepsift.engines import dali  # noqa: E402, F401
