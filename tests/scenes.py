"""A real-looking face clip for the face-mode tests and benchmarks: the astronaut's face (scikit-image) moving
steadily across a background of real photos, at any size, encoded by PyAV's libx264 at its defaults (B-frames
included, as phone and upload encoders make them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

from deepsift.engines.media import write_video


def photo_background(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Four real photos tiled over the frame: texture MTCNN's first stage proposes many boxes on."""
    tiles = [data.coffee(), data.chelsea(), data.rocket(), data.immunohistochemistry()]
    background = np.empty((height, width, 3), np.uint8)
    half_h, half_w = height // 2, width // 2
    corners = [(0, 0, half_h, half_w), (0, half_w, half_h, width), (half_h, 0, height, half_w),
               (half_h, half_w, height, width)]  # fmt: skip
    for k, (y0, x0, y1, x1) in enumerate(corners):
        tile = Image.fromarray(tiles[(k + seed) % len(tiles)]).resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR)
        background[y0:y1, x0:x1] = np.asarray(tile)
    return background


def moving_face_frames(width: int, height: int, n: int, seed: int = 0, face_side: int | None = None):
    """``n`` frames of the astronaut's face crossing the photo background on a straight line (seeded)."""
    side = face_side or height // 4
    background = photo_background(width, height, seed)
    face = np.asarray(Image.fromarray(data.astronaut()[20:260, 120:360]).resize((side, side)))
    rng = np.random.default_rng(seed)
    x0, y0 = int(rng.integers(0, max(1, width // 3))), int(rng.integers(0, height - side))
    x1, y1 = int(rng.integers(width // 2, width - side)), int(rng.integers(0, height - side))
    for t in range(n):
        a = t / max(1, n - 1)
        x, y = round(x0 + a * (x1 - x0)), round(y0 + a * (y1 - y0))
        frame = background.copy()
        frame[y : y + side, x : x + side] = face
        yield frame


def write_face_clip(path: Path, width: int, height: int, seconds: float, fps: float = 25.0, seed: int = 0) -> Path:
    """An H.264 clip of the moving face, cached: written only when ``path`` does not exist."""
    if not path.exists():
        write_video(path, moving_face_frames(width, height, round(seconds * fps), seed), fps=fps)
    return path
