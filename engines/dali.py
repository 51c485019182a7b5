"""GPU decode with NVIDIA DALI: routed by a PyAV probe, contained in a worker process, PyAV as the fallback.

Routing: every input is probed with PyAV first (``probe_timing``: codec, frame timing, stream count, still
image or video). DALI gets only what it decodes the same way PyAV does: one video stream, a codec in
``DALI_CODECS``, 8-bit 4:2:0 pixels, constant frame rate with every frame timed in order (then frame n of
PyAV's timestamp rule is DALI's n-th frame), a declared frame count that the packets confirm, and a duration
within ``max_duration_s`` (DALI indexes the whole file and has been slow on very long ones). Everything else
goes to PyAV, and ``DecodedMedia.fallback_reason`` says why: ``image``, ``codec:mpeg4``,
``variable_frame_rate``, ``video_streams:2``, ``pixel_format:yuv420p10le``, ``too_long``, ``no_frames``,
``frame_count_mismatch``, ``frame_budget`` (full-size frames would not fit the job's frame budget: PyAV decodes
them downscaled), ``probe_error:<media error code>``, or a worker failure below. Media over the job's
``MediaBudget`` is refused from the probe's headers (``probe_error:too_many_pixels`` and the like, then PyAV's
decoder raises the same code before decoding any frame).

Decoding: DALI's video decoder (``fn.decoders.video``, mixed backend) takes the encoded bytes from memory and
a ``frames`` list — exactly the indices ``sample_frame_indices`` picks for PyAV — and decodes only what it needs
to reach them (seeking by keyframe with its index), so no contiguous span is decoded beyond that.

Isolation: DALI can crash or hang on bad input (its issues #5489, #2919, #4003), so it runs in one spawned,
long-lived worker process per daemon (``engines.dali_worker.IsolatedDecoder``). A video whose worker dies becomes
that video's PyAV fallback with reason ``dali_crashed``; one that takes longer than ``timeout_s`` is
``dali_timeout`` (the worker is killed); an exception inside the worker is ``dali_error`` (the worker lives on);
a worker that cannot start (no GPU, DALI missing) is ``dali_start_failed``. The next video starts a fresh worker.
If PyAV fails too, its ``MediaError`` becomes the job's error verdict; nothing here fails a batch or the daemon.

Frame hand-off: through host shared memory, not CUDA IPC. The worker copies DALI's frames into a
shared-memory segment the parent owns; the parent uploads them to its GPU (one host→device copy, ~8 ms
for 32 1080p frames over PCIe 4). CUDA IPC would save that copy and the device→host one in the worker,
but a tensor shared by IPC lives in the worker's CUDA context: when the worker crashes or is killed on a
timeout, the parent's tensors point at freed memory, which is the failure this design must contain; and
DALI reuses its output buffers, so a copy is needed anyway. The encoded bytes travel the same segment.
The segment lives in /dev/shm: containers need it sized for frames × height × width × 3 bytes plus the
largest upload (Docker's default of 64 MiB is too small for 32 1080p frames, ~200 MB).

Nothing heavy happens at import: ``nvidia.dali`` is imported only inside the worker (the worker also
imports this module, and with it PyAV) and torch only when frames go to a CUDA device.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from deepsift.engines.budgets import MediaBudget
from deepsift.engines.dali_worker import DecoderFailure, FrameDecoder, IsolatedDecoder
from deepsift.engines.errors import MediaError
from deepsift.engines.media import (
    DEFAULT_BUDGET,
    DecodedMedia,
    MediaSource,
    SampledFrame,
    VideoTiming,
    decode_sampled,
    probe_timing,
    sample_frame_indices,
)

log = logging.getLogger(__name__)

# Codecs DALI's mixed-backend video decoder takes to NVDEC on every GPU generation deepsift targets. DALI also
# lists MPEG-4 Part 2, VP8 and MJPEG; those stay on PyAV until a GPU check proves them against it.
DALI_CODECS = frozenset({"h264", "hevc", "vp9", "av1"})
# 8-bit 4:2:0 limited range: what DALI's YUV→RGB conversion is checked against PyAV's for (tests/gpu).
DALI_PIXEL_FORMATS = frozenset({"yuv420p"})


@dataclass(frozen=True)
class DaliSettings:
    device: str = "cuda:0"  # where decoded frames are handed over; "cpu" keeps them as numpy (tests, no GPU)
    timeout_s: float = 30.0  # one video's decode in the worker, after which the worker is killed
    start_timeout_s: float = 120.0  # spawn, DALI import and pipeline build
    max_duration_s: float = 1800.0  # longer videos go to PyAV's seeking decoder
    codecs: frozenset[str] = DALI_CODECS


def dali_missing(device: str) -> str | None:
    """What stops DALI from running on ``device``, or None (a line for start-up logs and benchmarks)."""
    if device != "auto" and not device.startswith("cuda"):
        return f"device {device!r} is not a CUDA device"
    if not _cuda_available():
        return "no CUDA device is available"
    if not _dali_installed():
        return "nvidia.dali is not installed (the 'gpu' extra: pip install 'deepsift[gpu]')"
    return None


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _dali_installed() -> bool:
    """Whether nvidia.dali can be found; it is imported only in the worker, which reports a failed import."""
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except (ImportError, ValueError):  # no "nvidia" namespace at all
        return False


# --- routing ----------------------------------------------------------------------------------------


def route(timing: VideoTiming, settings: DaliSettings) -> str | None:
    """Why this media must go to PyAV instead of DALI (a fallback reason), or None when DALI may decode it."""
    facts = timing.facts
    if facts.media_type != "video":
        return facts.media_type
    if facts.codec not in settings.codecs:
        return f"codec:{facts.codec}"
    if timing.video_streams != 1:
        return f"video_streams:{timing.video_streams}"
    if facts.duration_s is None or facts.duration_s > settings.max_duration_s:
        return "too_long"
    if not timing.frame_times_s:
        return "no_frames"
    if not timing.frames_in_order():
        return "variable_frame_rate"
    if facts.frame_count != len(timing.frame_times_s):
        return "frame_count_mismatch"  # a truncated file, or a container whose declaration is off
    if timing.pixel_format not in DALI_PIXEL_FORMATS:
        return f"pixel_format:{timing.pixel_format}"  # None: FFmpeg could not read the stream's parameters
    return None


def route_media(
    source: MediaSource, settings: DaliSettings, budget: MediaBudget | None = None
) -> tuple[VideoTiming | None, str | None]:
    """Probe ``source`` with PyAV and route it; media PyAV cannot probe, or over ``budget``, goes to PyAV, which
    reports it."""
    try:
        timing = probe_timing(source, max_duration_s=settings.max_duration_s, budget=budget)
    except MediaError as e:
        return None, f"probe_error:{e.code}"
    return timing, route(timing, settings)


# --- the worker process -----------------------------------------------------------------------------


class DaliFrameDecoder:
    """The worker's DALI pipeline: encoded bytes and frame indices in, RGB frames out (``FrameDecoder``)."""

    def __init__(self, device_id: int) -> None:
        from nvidia.dali import fn, pipeline_def, types

        video = fn.decoders.video if hasattr(fn, "decoders") and hasattr(fn.decoders, "video") else None
        video = video or fn.experimental.decoders.video  # DALI before 2.0

        @pipeline_def(batch_size=1, num_threads=2, device_id=device_id, prefetch_queue_depth=1)
        def frames_pipeline() -> Any:
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            indices = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
            return video(encoded, device="mixed", frames=indices)

        self._pipeline = frames_pipeline()
        self._pipeline.build()

    def __call__(self, encoded: np.ndarray, frames: Sequence[int], out: np.ndarray) -> None:
        self._pipeline.feed_input("encoded", [encoded])
        self._pipeline.feed_input("frames", [np.asarray(frames, np.int32)])
        (decoded,) = self._pipeline.run()
        host = decoded.as_cpu().as_array()[0]
        if host.shape != out.shape:
            raise ValueError(f"DALI returned frames of shape {host.shape}, the probe expects {out.shape}")
        np.copyto(out, host)


def dali_frame_decoder(device_id: int = 0) -> FrameDecoder:
    """The worker's default decoder factory (runs in the worker, where DALI is imported)."""
    return DaliFrameDecoder(device_id)


# --- the decoder ----------------------------------------------------------------------------------------


class DaliDecoder:
    """The ``dali`` decoder (``engines.decoders.Decoder``): routes each input, decodes in the isolated worker, falls
    back to PyAV with a reason. One is built at start-up (``engines.decoders.open_decoder``) and closed at the end."""

    name = "dali"

    def __init__(self, settings: DaliSettings | None = None, make_decoder: Callable[[], FrameDecoder] | None = None):
        self.settings = settings or DaliSettings()
        factory = make_decoder or functools.partial(dali_frame_decoder, _device_index(self.settings.device))
        self.worker = IsolatedDecoder(factory, self.settings.timeout_s, self.settings.start_timeout_s)

    def __call__(
        self, source: MediaSource, n_frames: int = 32, *, budget: MediaBudget = DEFAULT_BUDGET
    ) -> DecodedMedia:
        if n_frames < 1:
            raise ValueError(f"n_frames must be >= 1, got {n_frames}")
        timing, reason = route_media(source, self.settings, budget)
        if reason is None and timing is not None and _over_frame_budget(timing, n_frames, budget):
            reason = "frame_budget"  # DALI decodes at full size only; PyAV decodes the frames downscaled
        if reason is None and timing is not None:
            try:
                return self._decode(source, timing, n_frames)
            except DecoderFailure as e:
                reason = e.reason
                log.warning("DALI failed on a video, PyAV decodes it: %s", e)
        return replace(decode_sampled(source, n_frames, budget=budget), fallback_reason=reason)

    def start(self) -> None:
        """Start the worker now (else the first video routed to DALI does), raising ``DecoderFailure`` if it cannot."""
        self.worker.start()

    def close(self) -> None:
        self.worker.close()

    def _decode(self, source: MediaSource, timing: VideoTiming, n_frames: int) -> DecodedMedia:
        facts = timing.facts
        targets = sample_frame_indices(facts.frame_count, n_frames)  # type: ignore[arg-type]
        width, height = (facts.height, facts.width) if timing.rotation % 180 else (facts.width, facts.height)
        encoded = bytes(source) if isinstance(source, bytes | bytearray | memoryview) else Path(source).read_bytes()
        frames = self.worker.decode(encoded, targets, (len(targets), height, width, 3), self._take)
        quarter_turns = round(timing.rotation / 90) % 4
        sampled = tuple(
            SampledFrame(index, timing.frame_times_s[index], _upright(frame, quarter_turns))
            for index, frame in zip(targets, frames, strict=True)
        )
        return DecodedMedia(facts, sampled, decoder="dali")

    def _take(self, frames: np.ndarray) -> Any:
        """Copy the worker's frames out of shared memory: onto the GPU, or into host memory on "cpu"."""
        if self.settings.device == "cpu":
            return frames.copy()
        import torch

        return torch.from_numpy(frames).to(self.settings.device)


def _over_frame_budget(timing: VideoTiming, n_frames: int, budget: MediaBudget) -> bool:
    facts = timing.facts
    targets = len(sample_frame_indices(facts.frame_count or 0, n_frames))
    return budget.decode_scale(facts.width, facts.height, targets) < 1.0


def _upright(frame: Any, quarter_turns: int) -> Any:
    """The display rotation applied, as PyAV's decoder applies it (numpy and torch rotate alike)."""
    if not quarter_turns:
        return frame
    if isinstance(frame, np.ndarray):
        return np.ascontiguousarray(np.rot90(frame, k=quarter_turns))
    return frame.rot90(quarter_turns, (0, 1)).contiguous()


def _device_index(device: str) -> int:
    return int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0
