"""Real media made on the fly for the decode and face tests: H.264 clips, images, face photos.

Clip frames draw their own index: a white column at x = index % width in the top half and one at
x = index // width in the bottom half, so a test can tell which frame it got back.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepsift.engines.media import write_video

CLIP_WIDTH, CLIP_HEIGHT, CLIP_FPS = 160, 96, 25.0


def index_frame(index: int, noise: np.random.Generator | None = None) -> np.ndarray:
    """A frame that shows its own index (see the module docstring); optional noise makes it costly to encode."""
    if noise is None:
        rgb = np.zeros((CLIP_HEIGHT, CLIP_WIDTH, 3), np.uint8)
    else:
        rgb = noise.integers(0, 48, (CLIP_HEIGHT, CLIP_WIDTH, 3), dtype=np.uint8)
    rgb[: CLIP_HEIGHT // 2, index % CLIP_WIDTH] = 255
    rgb[CLIP_HEIGHT // 2 :, (index // CLIP_WIDTH) % CLIP_WIDTH] = 255
    return rgb


def shown_index(rgb: np.ndarray) -> int:
    """The index an ``index_frame`` shows, read back after lossy compression."""
    luma = rgb.astype(np.int64).sum(axis=2)
    low = int(np.argmax(luma[: CLIP_HEIGHT // 2].sum(axis=0)))
    high = int(np.argmax(luma[CLIP_HEIGHT // 2 :].sum(axis=0)))
    return high * CLIP_WIDTH + low


def index_frames(n: int, noisy: bool = False) -> Iterator[np.ndarray]:
    noise = np.random.default_rng(0) if noisy else None
    return (index_frame(i, noise) for i in range(n))


@pytest.fixture(scope="session")
def read_index() -> Callable[[np.ndarray], int]:
    return shown_index


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def clip_120(media_dir: Path) -> Path:
    """120 frames (4.8 s at 25 fps), H.264 in a faststart MP4 with x264's default keyframe interval."""
    path = media_dir / "clip120.mp4"
    write_video(path, index_frames(120), fps=CLIP_FPS)
    return path


@pytest.fixture(scope="session")
def clip_120_mkv(media_dir: Path) -> Path:
    """The same clip in Matroska, which declares a duration but no frame count."""
    path = media_dir / "clip120.mkv"
    write_video(path, index_frames(120), fps=CLIP_FPS)
    return path


@pytest.fixture(scope="session")
def long_clip(media_dir: Path) -> Path:
    """2400 frames (96 s) with a keyframe every second, like a phone recording."""
    path = media_dir / "long.mp4"
    write_video(path, index_frames(2400), fps=CLIP_FPS, keyframe_interval=25)
    return path


@pytest.fixture(scope="session")
def noisy_clip(media_dir: Path) -> Path:
    """120 noisy frames, so the frame data (not the MP4 header) dominates the file."""
    path = media_dir / "noisy.mp4"
    write_video(path, index_frames(120, noisy=True), fps=CLIP_FPS)
    return path


@pytest.fixture(scope="session")
def rotated_clip(media_dir: Path) -> Path:
    """A 160x96 clip whose display matrix says: rotate 90° counter-clockwise, with a white band on top."""
    rgb = np.zeros((CLIP_HEIGHT, CLIP_WIDTH, 3), np.uint8)
    rgb[:8] = 255
    path = media_dir / "rotated.mp4"
    write_video(path, (rgb for _ in range(10)), fps=CLIP_FPS, display_rotation=90)
    return path


@pytest.fixture(scope="session")
def png_bytes() -> bytes:
    """A 30x20 RGBA PNG with a gradient, to check the RGB conversion is exact."""
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 0] = np.arange(30, dtype=np.uint8) * 8
    rgba[..., 3] = 255
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def jpeg_exif_rotated() -> bytes:
    """A 100x40 (w x h) JPEG with a white top-left block and EXIF orientation 6 (shown turned 90° clockwise)."""
    rgb = np.zeros((40, 100, 3), np.uint8)
    rgb[:10, :10] = 255
    image = Image.fromarray(rgb)
    exif = image.getexif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif, quality=95)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """A real 512x512 portrait (one face, roughly x 180–270, y 60–175)."""
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="session")
def mtcnn_detector():
    """One MTCNN for the whole session: building it loads three networks."""
    from deepsift.engines.faces import MtcnnFaceDetector

    return MtcnnFaceDetector()
