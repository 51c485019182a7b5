"""Still images through PIL for ``engines.media``: header facts, upright RGB, libjpeg's reduced-scale decode."""

from __future__ import annotations

import functools
import io

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from deepsift.engines._media_types import DecodedMedia, MediaFacts, SampledFrame, Source
from deepsift.engines.budgets import MediaBudget
from deepsift.engines.errors import MediaError

# Formats PIL may claim; anything else goes to PyAV. A closed list stops PIL's lenient probes
# (TGA, ...) from claiming random bytes as an image.
# (JPEG covers MPO, the multi-picture JPEG of some cameras.)
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
# Animated images in these formats are decoded as video by PyAV; others keep their first frame.
# (FFmpeg cannot decode animated WebP, so PIL keeps its first frame.)
ANIMATED_AS_VIDEO = frozenset({"GIF", "PNG"})
_ROTATING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height
IMAGE_BAND_BYTES = 16 << 20  # rows converted to RGB at a time when an image becomes an array


@functools.cache
def _image_formats() -> tuple[str, ...]:
    """The formats of ``IMAGE_FORMATS`` this Pillow build can open (WebP support is optional)."""
    Image.init()
    return tuple(fmt for fmt in IMAGE_FORMATS if fmt in Image.OPEN)


def open_image(src: Source) -> Image.Image | None:
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


def decode_image(image: Image.Image, size: int, budget: MediaBudget) -> DecodedMedia:
    """The image as one frame, refused from its header when over the budget, downscaled when over the frame budget.

    The facts keep the image's true (upright) size; ``scale`` says how far the kept frame was shrunk.
    """
    with image:
        facts = _image_facts(image, size)
        budget.check(facts)
        rgb = _image_rgb(image, budget.kept_size(facts.width, facts.height, 1))
    frame = SampledFrame(index=0, pts_s=None, rgb=rgb)
    return DecodedMedia(facts, (frame,), scale=rgb.shape[1] / facts.width)


def probe_image(image: Image.Image, size: int, budget: MediaBudget | None) -> MediaFacts:
    """The image's facts from its header, refused when over ``budget``; the image is closed."""
    with image:
        facts = _image_facts(image, size)
    if budget is not None:
        budget.check(facts)
    return facts
