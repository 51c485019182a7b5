"""A synthetic forgery task that runs offline: real scenes around a real face photo, and the same scenes
with a foreign region blended into the face (pasted texture + resampling traces).

It exists so the demo engine and the tests have data with known ground truth without any dataset
download. It teaches a detector to find blended pastes — it is *not* a deepfake dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from engines.faces import FaceBox

CANVAS = (640, 360)  # width, height of generated frames
DONORS = ("chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "colorwheel")


@dataclass(frozen=True)
class Forgery:
    """A blended paste inside the face box, in face-photo coordinates."""

    cx: float  # centre, as a fraction of the face box
    cy: float
    radius: float  # as a fraction of the face box side
    donor: int
    donor_xy: tuple[float, float]  # where the donor patch is cut, as fractions of the donor image
    alpha: float


@dataclass(frozen=True)
class View:
    """Where the face photo sits on the canvas: its scale and the canvas position of its top-left corner."""

    scale: float
    x: float
    y: float

    def toward(self, end: View, t: float) -> View:
        """The view a fraction ``t`` of the way to ``end``: a smooth pan and zoom."""
        return View(
            *(a + (b - a) * t for a, b in zip((self.scale, self.x, self.y), (end.scale, end.x, end.y), strict=True))
        )


class SceneFactory:
    """Renders canvases from one face photo, donor images for pastes and backgrounds."""

    def __init__(self, face_photo: np.ndarray, face_box: FaceBox, donors: list[np.ndarray]) -> None:
        self.face = Image.fromarray(face_photo)
        self.box = face_box
        self.donors = [Image.fromarray(d).convert("RGB") for d in donors]
        self.backgrounds = [d.resize(CANVAS, Image.BILINEAR).filter(ImageFilter.GaussianBlur(3)) for d in self.donors]

    @classmethod
    def from_skimage(cls, face_box: FaceBox) -> SceneFactory:
        from skimage import data

        donors = [np.asarray(Image.fromarray(getattr(data, n)()).convert("RGB")) for n in DONORS]
        return cls(data.astronaut(), face_box, donors)

    def random_forgery(self, rng: np.random.Generator) -> Forgery:
        return Forgery(
            cx=rng.uniform(0.3, 0.7),
            cy=rng.uniform(0.35, 0.7),
            radius=rng.uniform(0.18, 0.3),
            donor=int(rng.integers(len(self.donors))),
            donor_xy=(rng.uniform(0.1, 0.7), rng.uniform(0.1, 0.7)),
            alpha=rng.uniform(0.85, 1.0),
        )

    def random_view(self, rng: np.random.Generator) -> View:
        scale = rng.uniform(0.45, 0.75)
        w, h = self.face.size[0] * scale, self.face.size[1] * scale
        return View(scale=scale, x=rng.uniform(-0.1 * w, CANVAS[0] - 0.9 * w), y=rng.uniform(-0.15 * h, CANVAS[1] - h))

    def forged_photo(self, forgery: Forgery | None) -> Image.Image:
        """The face photo, with the forgery blended in when one is given."""
        if forgery is None:
            return self.face
        b = self.box
        side = max(b.x1 - b.x0, b.y1 - b.y0)
        r = max(4, int(forgery.radius * side))
        cx, cy = int(b.x0 + forgery.cx * (b.x1 - b.x0)), int(b.y0 + forgery.cy * (b.y1 - b.y0))
        donor = self.donors[forgery.donor]
        dx, dy = int(forgery.donor_xy[0] * (donor.size[0] - 2 * r)), int(forgery.donor_xy[1] * (donor.size[1] - 2 * r))
        patch = donor.crop((dx, dy, dx + 2 * r, dy + 2 * r))
        patch = patch.resize((r, r), Image.BILINEAR).resize((2 * r, 2 * r), Image.BILINEAR)  # resampling trace
        mask = Image.new("L", (2 * r, 2 * r), 0)
        ImageDraw.Draw(mask).ellipse((r // 4, r // 4, 2 * r - r // 4, 2 * r - r // 4), fill=int(255 * forgery.alpha))
        mask = mask.filter(ImageFilter.GaussianBlur(r / 8))
        photo = self.face.copy()
        photo.paste(patch, (cx - r, cy - r), mask)
        return photo

    def render(self, photo: Image.Image, view: View, background: int = 0) -> tuple[np.ndarray, FaceBox]:
        """Place ``photo`` on a canvas; returns the frame and where the face box landed."""
        canvas = self.backgrounds[background % len(self.backgrounds)].copy()
        size = (round(photo.size[0] * view.scale), round(photo.size[1] * view.scale))
        canvas.paste(photo.resize(size, Image.BILINEAR), (round(view.x), round(view.y)))
        b, s = self.box, view.scale
        box = FaceBox(b.x0 * s + view.x, b.y0 * s + view.y, b.x1 * s + view.x, b.y1 * s + view.y, b.confidence)
        return np.asarray(canvas), box


def jitter_box(box: FaceBox, rng: np.random.Generator, amount: float = 0.05) -> FaceBox:
    """Move and resize a box by a few percent, as a face detector does from frame to frame."""
    w, h = box.x1 - box.x0, box.y1 - box.y0
    dx, dy, dw, dh = rng.uniform(-amount, amount, size=4)
    return FaceBox(box.x0 + dx * w, box.y0 + dy * h, box.x1 + (dx + dw) * w, box.y1 + (dy + dh) * h, box.confidence)


def jpeg_roundtrip(rgb: np.ndarray, quality: int) -> np.ndarray:
    import io

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))
