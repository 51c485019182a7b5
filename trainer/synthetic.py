"""A synthetic forgery task that runs offline: real scenes around a real face photo, and the same scenes
with a foreign region blended into the face (pasted texture + resampling traces).

It exists so the demo engine and the tests have data with known ground truth without any dataset
download. It teaches a detector to find blended pastes — it is *not* a deepfake dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from deepsift.engines.faces import FaceBox

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
        return self.face if forgery is None else self.forged_photo_and_mask(forgery)[0]

    def forged_photo_and_mask(self, forgery: Forgery) -> tuple[Image.Image, Image.Image]:
        """The forged photo and its tamper mask ("L", 255 where the paste outweighs the original)."""
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
        full_mask = Image.new("L", self.face.size, 0)
        full_mask.paste(mask.point(lambda v: 255 if v >= 128 else 0), (cx - r, cy - r))
        return photo, full_mask

    def synthesized_photo(self, rng: np.random.Generator) -> Image.Image:
        """A stand-in for an entirely generated image: the whole photo resampled, smoothed and colour-shifted,
        so the trace is global rather than local (the "synthetic" class of the 3-class task)."""
        w, h = self.face.size
        factor = rng.uniform(0.35, 0.5)
        small = self.face.resize((max(8, int(w * factor)), max(8, int(h * factor))), Image.BICUBIC)
        photo = small.resize((w, h), Image.BICUBIC).filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 2.0)))
        cast = np.array([rng.uniform(0.75, 0.9) if rng.random() < 0.5 else rng.uniform(1.1, 1.25) for _ in range(3)])
        return Image.fromarray(
            np.clip(np.asarray(photo, dtype=np.float32) * cast.astype(np.float32), 0, 255).astype(np.uint8)
        )

    def render_mask(self, mask: Image.Image, view: View) -> np.ndarray:
        """A photo-sized mask placed on a black canvas as ``render`` places the photo (H×W×1 uint8)."""
        canvas = Image.new("L", CANVAS, 0)
        size = (round(mask.size[0] * view.scale), round(mask.size[1] * view.scale))
        canvas.paste(mask.resize(size, Image.NEAREST), (round(view.x), round(view.y)))
        return np.asarray(canvas)[..., None]

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


SYNTHETIC_KINDS = ("real", "tampered", "synthetic")  # manipulation types of the offline task
FACE_DESCRIPTIONS = (
    "a smiling woman with short dark hair in a white space suit",
    "an astronaut with a friendly expression, dark hair and a white suit",
    "a woman in a white NASA suit looking at the camera and smiling",
)


def describe(view: View, background: int, rng: np.random.Generator) -> tuple[str, str]:
    """Face and environment descriptions of a rendered scene, as a VLM might give them (seed 002 App. F): true
    of the picture, varied, and independent of whether it was forged."""
    size = "large" if view.scale > 0.65 else "medium-sized" if view.scale > 0.55 else "small"
    side = "left" if view.x < CANVAS[0] * 0.2 else "right" if view.x > CANVAS[0] * 0.4 else "centre"
    face = f"{FACE_DESCRIPTIONS[int(rng.integers(len(FACE_DESCRIPTIONS)))]}, {size} in the frame"
    environment = f"a blurred {DONORS[background % len(DONORS)]} picture behind the person, who stands {side}"
    return face, environment


def write_forgery_dataset(
    out: Path,
    factory: SceneFactory,
    counts: dict[str, int],
    *,
    kinds: tuple[str, ...] = SYNTHETIC_KINDS,
    crop_size: int = 96,
    margin: float = 0.3,
    frames_per_video: int = 4,
    seed: int = 0,
) -> Path:
    """Write face crops of the offline forgery task with tamper masks and descriptions, and a JSONL manifest.

    ``counts`` gives images per split, spread evenly over ``kinds``; consecutive crops of one kind share a
    ``video_id`` (``frames_per_video`` of them), so video-level aggregation can be exercised. Returns the
    manifest path.
    """
    from deepsift.engines.faces import square_crop
    from deepsift.trainer.data import ManifestRow, write_manifest

    out.mkdir(parents=True, exist_ok=True)
    rng, rows = np.random.default_rng(seed), []
    synthesized = [factory.synthesized_photo(rng) for _ in range(8)]  # a pool: resampling a full photo is slow
    for split, n in counts.items():
        (out / split).mkdir(exist_ok=True)
        for i in range(n):
            kind = kinds[i % len(kinds)]
            video = f"{split}-{kind}-{(i // len(kinds)) // frames_per_video}"
            mask_img = None
            if kind == "tampered":
                photo, mask_img = factory.forged_photo_and_mask(factory.random_forgery(rng))
            elif kind == "synthetic":
                photo = synthesized[int(rng.integers(len(synthesized)))]
            else:
                photo = factory.face
            view, background = factory.random_view(rng), int(rng.integers(100))
            frame, box = factory.render(photo, view, background)
            face, environment = describe(view, background, rng)
            box = jitter_box(box, rng)
            crop = square_crop(frame, box, margin)
            flip = rng.random() < 0.5
            crop = Image.fromarray(crop[:, ::-1].copy() if flip else crop).resize(
                (crop_size, crop_size), Image.BILINEAR
            )
            crop = Image.fromarray(jpeg_roundtrip(np.asarray(crop), int(rng.integers(60, 96))))
            name = f"{split}/{i:05d}_{kind}"
            crop.save(out / f"{name}.png")
            mask_path = ""
            if mask_img is not None:
                mask = square_crop(factory.render_mask(mask_img, view), box, margin)[..., 0]
                mask = Image.fromarray(mask[:, ::-1].copy() if flip else mask).resize(
                    (crop_size, crop_size), Image.NEAREST
                )
                mask.save(out / f"{name}_mask.png")
                mask_path = f"{name}_mask.png"
            rows.append(ManifestRow(
                path=f"{name}.png", label="real" if kind == "real" else "fake", split=split,
                manipulation="" if kind == "real" else kind, mask_path=mask_path, video_id=video,
                face_description=face,
                environment_description=environment,
            ))  # fmt: skip
    return write_manifest(rows, out / "manifest.jsonl")
