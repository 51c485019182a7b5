"""Sampled-frame decode of video with PyAV for ``engines.media`` (its docstring states the sampling, truncation,
budget and damage rules this module implements)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import av
import av.error
import numpy as np

from deepsift.engines._media_types import DecodedMedia, MediaFacts, SampledFrame, Source
from deepsift.engines.budgets import MediaBudget, decoder_threads
from deepsift.engines.errors import MediaError

SEEK_MIN_GAP_FRAMES = 64
TRUNCATION_COVERAGE = 0.9
# Demuxers such as HLS open the files or URLs an upload names; allowing no protocol confines
# FFmpeg to the bytes handed to it (the main input is read through Python, not a protocol).
_NO_NESTED_INPUTS = {"protocol_whitelist": "none"}


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


# --- video: container and facts -----------------------------------------------------------------


@contextmanager
def _open_video(src: Source) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
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


def _count_packets(src: Source) -> int:
    """Frame count of a container that declares neither count nor duration: demux without decoding."""
    with _open_video(src) as (container, stream):
        try:
            return sum(1 for packet in container.demux(stream) if packet.size)
        except av.error.FFmpegError as e:
            raise MediaError("corrupt_media", f"cannot demux the video stream: {e}") from e


def _video_facts(src: Source, container: av.container.InputContainer) -> MediaFacts:
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
    target: int = 0  # the frame index being decoded towards: unreferenced frames before it are not decoded
    rotation: int = 0  # display rotation of the first decoded frame, degrees counter-clockwise
    coded_size: tuple[int, int] = (0, 0)  # width and height of the first decoded frame, before rotation
    last_raw: tuple[av.VideoFrame, int] | None = None  # turned into ``last`` only at the end

    def index_of(self, frame: av.VideoFrame) -> int:
        """The frame's index in the video: from its timestamp, or its decode order without timing."""
        if self.fps and frame.time is not None:
            return round((frame.time - self.start_s) * self.fps)
        return self.decoded

    def packet_index(self, packet: av.Packet, stream: av.video.stream.VideoStream) -> int:
        """The index of the frame a timed packet holds (as ``index_of`` will give it once decoded)."""
        return round((float(packet.pts * stream.time_base) - self.start_s) * self.fps)

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
    """Frames in presentation order; packets that fail to decode are skipped, demux errors propagate.

    A packet shown before ``scan.target`` is decoded only when other frames refer to it: FFmpeg is told to skip
    unreferenced frames (``skip_frame``, set per packet; frame threads take it with each packet). Such frames
    are never kept, and nothing decodes from them; in H.264 from phones and encoders' defaults they are the
    non-reference B-frames, half the frames and a third of decoding time. Without timing every frame is decoded.
    """
    context = stream.codec_context
    skipping = False
    for packet in container.demux(stream):
        skip = scan.fps is not None and packet.pts is not None and scan.packet_index(packet, stream) < scan.target
        if skip != skipping:
            context.skip_frame, skipping = ("NONREF" if skip else "DEFAULT"), skip
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
            scan.target = target
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


def decode_video(src: Source, n_frames: int, seek_min_gap: int, budget: MediaBudget) -> DecodedMedia:
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


# --- video: probing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoHeader:
    """What the headers and the first frame say about a video, before any sampled frame is decoded."""

    facts: MediaFacts  # upright (displayed) size
    rotation: int  # display rotation of the first frame, degrees counter-clockwise
    video_streams: int
    pixel_format: str | None
    start_s: float  # the stream's first timestamp: frame index 0 of the sampling rule


def probe_video(src: Source, budget: MediaBudget | None) -> VideoHeader:
    """The video's header facts, refused when over ``budget`` before its first frame is decoded for the rotation."""
    with _open_video(src) as (container, stream):
        facts = _video_facts(src, container)
        if budget is not None:
            budget.check(facts)
        _bound_decoder(stream, facts, budget)
        rotation = _first_rotation(container, stream)
        video_streams, pixel_format = len(container.streams.video), stream.codec_context.pix_fmt
        start_s = float((stream.start_time or 0) * stream.time_base)
    return VideoHeader(_upright(facts, rotation), rotation, video_streams, pixel_format, start_s)


def _first_rotation(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int:
    """The display rotation of the first decodable frame; 0 when none decodes (decode reports that)."""
    try:
        frame = next(_decoded_frames(container, stream, _Scan(start_s=0.0, fps=None)), None)
    except av.error.FFmpegError:
        return 0
    return round(frame.rotation or 0) if frame is not None else 0


def packet_times(src: Source) -> tuple[tuple[float, ...], int]:
    """Presentation times of the first video stream's packets, ascending, and how many packets had none."""
    with _open_video(src) as (container, stream):
        try:
            pts = [packet.pts for packet in container.demux(stream) if packet.size]
        except av.error.FFmpegError as e:
            raise MediaError("corrupt_media", f"cannot demux the video stream: {e}") from e
        time_base = stream.time_base
    timed = sorted(float(p * time_base) for p in pts if p is not None)
    return tuple(timed), len(pts) - len(timed)
