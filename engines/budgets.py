"""Pixel, length and memory budgets for one job, decided from the media's header before any frame is decoded.

A bomb (a 13000×13000 JPEG, an H.264 stream of 16k×16k frames, a ten-hour clip) is refused from its probed facts
with an error code — ``too_many_pixels``, ``too_long`` or ``too_small`` — before anything large is allocated.
Large but legitimate media (4K and 8K video, 8K photos, long videos) is judged: its sampled frames are decoded
at the largest size at which they fit ``frame_budget_bytes`` together (``decode_scale``), and faces are detected
on a copy whose long side is at most ``detect_max_side`` (``engines.faces``); crops are cut from the kept frames.

Memory ceiling of one job (CPU decode), on top of the process's own ~0.85 GB (torch, ONNX Runtime, MTCNN):

    ceiling ≈ B + D + M + P

    B  kept frames      ≤ frame_budget_bytes (``job_frame_budget_mb``): n sampled frames × w·h·3 bytes, decoded
                        downscaled to fit, plus one frame in flight while it is turned upright.
                        Still images: Pillow's decode holds ≈ 8.5 bytes × image pixels (its 4-byte buffer and
                        the RGB array, converted band by band), ≤ 0.85 GB at ``max_image_pixels`` = 100 Mpx; over
                        the frame budget, JPEGs are decoded by libjpeg at 1/2, 1/4 or 1/8 scale (``draft``).
    D  decoder buffers  ≈ (threads + refs + 2) × 1.5 bytes × frame pixels (YUV 4:2:0 at the media's full size).
                        Frame threads are capped so that threads × frame ≤ ``DECODER_THREAD_BYTES`` (256 MiB);
                        refs ≤ 16 for H.264/HEVC, typically 1–4. A 4K phone clip: ≈ 0.1–0.3 GB; the worst legal
                        stream at ``max_frame_pixels`` (36 Mpx, 16 refs): ≈ 1.3 GB. FFmpeg refuses to allocate a
                        frame over ``max_frame_pixels`` even when the stream grows after its header.
    M  face detection   ≈ 50 bytes × ``MAX_DETECT_BATCH_PIXELS`` (7.4 Mpx: MTCNN's float copy, pyramid and P-net
                        maps, measured on CPU) ≈ 0.4 GB, plus the n detection copies (≤ detect_max_side² × 3 bytes
                        each, 22 MB for 32 frames of 16:9 at 640).
    P  regions          ≤ n × ``MAX_FACES_PER_FRAME`` (16) crops, cut from the kept frames (non-overlapping faces
                        cover at most (1 + margin)² of a frame, typically a few %), one float copy of the largest
                        region while it is resized (12 bytes/pixel; a whole kept frame in full-frame mode), and
                        the engine input: regions × 3 × S² × 4 bytes (≤ 0.3 GB for 32 frames, 16 faces, S = 224).

Measured peaks (``prepare`` in face mode, 32 frames, defaults, 2 CPU threads), above that baseline: a 40-frame
3840×2160 clip kept whole (0.8 GB of frames) 1.5 GB; a 7680×4320 clip decoded at 0.58 scale 1.8 GB. The daemon's
process holds one such ceiling per job it prepares at once.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from deepsift.engines.errors import MediaError

if TYPE_CHECKING:
    from deepsift.engines.media import MediaFacts

RGB_BYTES = 3  # per pixel of a kept (RGB uint8) frame
YUV420_BYTES = 1.5  # per pixel of a decoder buffer
DECODER_THREAD_BYTES = 256 << 20  # frames in flight across the decoder's frame threads
MAX_DETECT_BATCH_PIXELS = 8 * 1280 * 720  # pixels MTCNN sees in one forward pass
MAX_DECODER_THREADS = 16


@dataclass(frozen=True)
class MediaBudget:
    """Limits on what one job may decode, and the sizes its frames are decoded and searched for faces at.

    The defaults are the daemon settings' defaults, so the trainer and tests judge media as the daemon does.
    """

    max_image_pixels: int = 100_000_000  # a still image's width × height
    max_frame_pixels: int = 36_000_000  # a video frame's width × height (8K UHD is 33 Mpx)
    max_video_pixels: float = 1e12  # frame count × frame pixels: a 30-minute 4K60 video (9e11) passes
    max_duration_s: float = 7200.0
    frame_budget_bytes: int = 1024 << 20  # the sampled frames of one job, as RGB
    detect_max_side: int = 640  # face detection runs on a copy whose long side is at most this
    min_side: int = 2  # narrower or lower media carries no picture to judge

    def __post_init__(self) -> None:
        for name in ("max_image_pixels", "max_frame_pixels", "max_video_pixels", "max_duration_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.frame_budget_bytes < RGB_BYTES or self.detect_max_side < 1 or self.min_side < 1:
            raise ValueError(f"frame_budget_bytes, detect_max_side and min_side must be positive: {self}")

    def check(self, facts: MediaFacts) -> None:
        """Raise the ``MediaError`` a verdict should carry when the probed media is over (or under) a limit.

        A size the header leaves unknown (0: FFmpeg found no stream parameters) passes the pixel checks here; the
        decoder then still refuses frames over ``max_frame_pixels`` and keeps frames within the frame budget.
        """
        width, height = facts.width, facts.height
        if width <= 0 or height <= 0:
            width = height = 0
        elif min(width, height) < self.min_side:
            raise MediaError("too_small", f"{width}x{height} is under the minimum side of {self.min_side} px")
        pixels = width * height
        if facts.media_type == "image":
            if pixels > self.max_image_pixels:
                raise MediaError("too_many_pixels", f"{width}x{height} image > limit {self.max_image_pixels} px")
            return
        if pixels > self.max_frame_pixels:
            raise MediaError("too_many_pixels", f"{width}x{height} frames > limit {self.max_frame_pixels} px")
        if facts.duration_s is not None and facts.duration_s > self.max_duration_s:
            raise MediaError("too_long", f"{facts.duration_s:.1f} s > limit {self.max_duration_s:g} s")
        frames = facts.frame_count or 0
        if frames * pixels > self.max_video_pixels:
            raise MediaError(
                "too_many_pixels", f"{frames} frames of {width}x{height} > limit {self.max_video_pixels:g} px in all"
            )

    def frame_pixels(self, n_frames: int) -> int:
        """The pixels one of ``n_frames`` kept frames may have for all of them to fit the frame budget."""
        return max(1, self.frame_budget_bytes // (RGB_BYTES * max(n_frames, 1)))

    def decode_scale(self, width: int, height: int, n_frames: int) -> float:
        """The scale (≤ 1) at which ``n_frames`` sampled frames of width × height fit the frame budget together."""
        return min(1.0, math.sqrt(self.frame_pixels(n_frames) / max(width * height, 1)))

    def kept_size(self, width: int, height: int, n_frames: int) -> tuple[int, int]:
        """Width and height of a kept frame: ``decode_scale`` applied, the aspect ratio kept, at least 1 px."""
        scale = self.decode_scale(width, height, n_frames)
        if scale >= 1.0:
            return width, height
        return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))


def decoder_threads(width: int, height: int) -> int:
    """Frame threads for decoding frames of width × height: as many as fit ``DECODER_THREAD_BYTES``, ≥ 1."""
    frame_bytes = max(1.0, width * height * YUV420_BYTES)
    fit = int(DECODER_THREAD_BYTES // frame_bytes)
    return max(1, min(fit, os.cpu_count() or 1, MAX_DECODER_THREADS))


def detection_size(width: int, height: int, max_side: int, min_side: int = 1) -> tuple[int, int]:
    """The size of the copy faces are searched on: long side at most ``max_side``, short side kept at ``min_side``
    or more (the detector's smallest face) where the frame has it, so a very wide frame is not squeezed flat."""
    scale = min(1.0, max_side / max(width, height, 1))
    scale = min(1.0, max(scale, min_side / max(min(width, height), 1)))
    if scale >= 1.0:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))
