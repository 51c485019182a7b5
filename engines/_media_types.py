"""The records every decoder returns and the re-openable source they read; public through ``engines.media``."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from deepsift.engines.errors import MediaError

if TYPE_CHECKING:
    import torch

MediaSource = str | os.PathLike[str] | bytes


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


@dataclass(frozen=True)
class Source:
    """Media bytes or a path, re-openable as a fresh file object (PIL and PyAV each read it)."""

    data: bytes | None
    path: str | None
    size: int

    def open(self) -> BinaryIO:
        return io.BytesIO(self.data) if self.data is not None else open(self.path, "rb")


def open_source(source: MediaSource) -> Source:
    """Wrap a source; paths are read by Python so FFmpeg never interprets a name as a URL/protocol."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        src = Source(data=data, path=None, size=len(data))
    else:
        path = os.fspath(source)
        src = Source(data=None, path=path, size=os.stat(path).st_size)
    if src.size == 0:
        raise MediaError("empty_media", "the media has 0 bytes")
    return src
