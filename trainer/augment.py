"""Training augmentations of seed 000 §2.2 (flips, mild affine/perspective, JPEG, noise, colour jitter, blur or
motion blur or sharpening, CLAHE), before the shared normalisation.

A recipe's ``augment.stage`` says which pixels they see: the decoded uint8 image (``decoded``), or the model-size
float image in [0, 1] after the contract's resize and pad (``resized``, as §2.2 orders them). Either way the pixels
then go through the serving code's remaining steps (``engines.preprocess``), so training and serving stay one path.

Geometric transforms move the tamper mask with the image (torchvision v2 transforms image and mask together);
photometric ones touch the image only. CLAHE and motion blur come from Kornia, the rest from torchvision.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from deepsift.engines.recipes import AugmentSpec

Transform = Callable[[torch.Tensor], torch.Tensor]


def _unit(image: torch.Tensor) -> torch.Tensor:
    """The image as float in [0, 1], whichever of the two stages' dtypes it has."""
    return image.float() / 255.0 if image.dtype == torch.uint8 else image


def _uint8(unit: torch.Tensor) -> torch.Tensor:
    """Float [0, 1] pixels as 8-bit levels, rounded as an 8-bit image library would."""
    return (unit.clamp(0.0, 1.0) * 255).round().to(torch.uint8)


def _like(result: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """A float [0, 1] result back in ``image``'s dtype."""
    return _uint8(result) if image.dtype == torch.uint8 else result.clamp(0.0, 1.0)


def _clahe(image: torch.Tensor) -> torch.Tensor:
    from kornia.enhance import equalize_clahe

    return _like(equalize_clahe(_unit(image)[None], clip_limit=2.0)[0], image)


def _noise(image: torch.Tensor) -> torch.Tensor:
    sigma = float(torch.empty(()).uniform_(2.0, 8.0)) / 255.0  # in 8-bit levels, whichever the dtype
    unit = _unit(image)
    return _like(unit + torch.randn(unit.shape) * sigma, image)


def _motion_blur(image: torch.Tensor) -> torch.Tensor:
    """A straight-line blur of 3 to 7 pixels (Albumentations' MotionBlur range), at any angle."""
    from kornia.filters import motion_blur

    kernel = int(torch.randint(1, 4, ()).item()) * 2 + 1
    angle, direction = float(torch.empty(()).uniform_(0.0, 360.0)), float(torch.empty(()).uniform_(-1.0, 1.0))
    return _like(motion_blur(_unit(image)[None], kernel, angle, direction, border_type="reflect")[0], image)


def _jpeg(quality: tuple[int, int]) -> Transform:
    """JPEG needs 8-bit pixels: a float image is quantised for it and comes back float."""
    encode = v2.JPEG(quality)

    def apply(image: torch.Tensor) -> torch.Tensor:
        if image.dtype == torch.uint8:
            return encode(image)
        return encode(_uint8(image)).float() / 255.0

    return apply


class Augmenter:
    """Callable ``(image CHW, mask bool 1HW) → (image, mask)`` drawing each augmentation with its probability; the
    image is uint8 (``decoded`` stage) or float in [0, 1] (``resized``) and keeps its dtype."""

    def __init__(self, spec: AugmentSpec) -> None:
        self.stage = spec.stage
        self.geometric = v2.Compose([
            v2.RandomHorizontalFlip(spec.hflip),
            v2.RandomApply([v2.RandomAffine(degrees=10, translate=(0.05, 0.05), scale=(0.9, 1.1))], p=spec.affine),
            v2.RandomPerspective(distortion_scale=0.15, p=spec.perspective),
        ])  # fmt: skip
        self.filters: list[tuple[float, Transform]] = [
            (spec.blur, v2.GaussianBlur(5, sigma=(0.1, 1.5))),
            (spec.motion_blur, _motion_blur),
            (spec.sharpen, v2.RandomAdjustSharpness(2.0, p=1.0)),
        ]
        self.photometric: list[tuple[float, Transform]] = [
            (spec.color_jitter, v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02)),
            (1.0 if any(p > 0 for p, _ in self.filters) else 0.0, self._one_filter),
            (spec.clahe, _clahe),
            (spec.noise, _noise),
            (spec.jpeg, _jpeg((40, 95))),
        ]

    def _one_filter(self, image: torch.Tensor) -> torch.Tensor:
        """Blur, motion blur or sharpening, at most one: one draw against their stacked probabilities."""
        draw, below = float(torch.rand(())), 0.0
        for p, transform in self.filters:
            below += p
            if draw < below:
                return transform(image)
        return image

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.geometric(tv_tensors.Image(image), tv_tensors.Mask(mask))
        image = image.as_subclass(torch.Tensor)
        for p, transform in self.photometric:
            if p > 0 and torch.rand(()) < p:
                image = transform(image)
        return image, mask.as_subclass(torch.Tensor)


def augmenter_for(spec: AugmentSpec) -> Augmenter | None:
    """None when every probability is zero, so evaluation-like training stays exactly deterministic."""
    return Augmenter(spec) if spec.active else None
