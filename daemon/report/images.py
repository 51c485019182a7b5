"""Pictures for a report page, as ``data:`` URIs so the page is one self-contained file: frames, face crops,
tamper-mask overlays and thumbnails. Face boxes are not painted into the frames: the page lays them over the
frame as elements, so they stay sharp, can be counted in the page and are drawn even when the frame is gone."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image, UnidentifiedImageError

FRAME_MAX_SIDE = 960  # frames on a verdict page
CROP_SIDE = 160  # face crops beside them
THUMBNAIL_MAX_SIDE = 160  # the scan index
MASK_COLOUR = (230, 30, 30)


def data_uri(image: Image.Image, quality: int = 85) -> str:
    """The image as a JPEG (RGB) or PNG (with transparency) ``data:`` URI."""
    buffer = io.BytesIO()
    if image.mode in ("RGBA", "LA", "L"):
        image.save(buffer, format="PNG", optimize=True)
        kind = "png"
    else:
        image.convert("RGB").save(buffer, format="JPEG", quality=quality)
        kind = "jpeg"
    return f"data:image/{kind};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def png_data_uri(png: bytes) -> str:
    return f"data:image/png;base64,{base64.b64encode(png).decode('ascii')}"


def fitted(rgb: np.ndarray, max_side: int) -> Image.Image:
    """The frame as an image whose long side is at most ``max_side``."""
    image = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return image


def crop(
    rgb: np.ndarray, box: tuple[float, float, float, float], media_size: tuple[int, int], side: int = CROP_SIDE
) -> Image.Image | None:
    """The box (in the media's pixels) cut from a frame decoded at any scale, as a ``side``-pixel square image."""
    height, width = rgb.shape[:2]
    media_width, media_height = media_size
    sx, sy = width / max(media_width, 1), height / max(media_height, 1)
    x0, y0, x1, y1 = box
    left, top = max(int(x0 * sx), 0), max(int(y0 * sy), 0)
    right, bottom = min(int(np.ceil(x1 * sx)), width), min(int(np.ceil(y1 * sy)), height)
    if right - left < 1 or bottom - top < 1:
        return None
    image = Image.fromarray(np.ascontiguousarray(rgb[top:bottom, left:right], dtype=np.uint8))
    return image.resize((side, side), Image.Resampling.BICUBIC)


def read_mask(png: bytes) -> Image.Image | None:
    """A stored mask (8-bit P(tampered) per pixel) as a grey image; None when the bytes are not a readable PNG."""
    try:
        with Image.open(io.BytesIO(png)) as image:
            image.load()
            return image.convert("L")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None


def overlay(base: Image.Image | None, mask: Image.Image, alpha: float = 0.55) -> Image.Image:
    """The mask laid over ``base`` (resized to it) in red, opaque where P(tampered) is high; on grey without one."""
    if base is None:
        base = Image.new("RGB", mask.size, (128, 128, 128))
    base = base.convert("RGB")
    weights = mask.resize(base.size, Image.Resampling.BILINEAR)
    strength = (np.asarray(weights, dtype=np.float32) / 255.0 * alpha)[..., None]
    pixels = np.asarray(base, dtype=np.float32)
    blended = pixels * (1.0 - strength) + np.asarray(MASK_COLOUR, dtype=np.float32) * strength
    return Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))
