"""Training augmentations of seed 000 §2.2 (flips, mild affine/perspective, JPEG, noise, colour jitter,
blur/sharpen, CLAHE), on decoded uint8 images before the shared preprocessing.

Geometric transforms move the tamper mask with the image (torchvision v2 transforms image and mask together);
photometric ones touch the image only. CLAHE comes from Kornia, the rest from torchvision.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from deepsift.engines.recipes import AugmentSpec


def _clahe(image: torch.Tensor) -> torch.Tensor:
    from kornia.enhance import equalize_clahe

    return (equalize_clahe(image.float()[None] / 255.0, clip_limit=2.0)[0] * 255).round().clamp(0, 255).to(torch.uint8)


def _noise(image: torch.Tensor) -> torch.Tensor:
    sigma = float(torch.empty(()).uniform_(2.0, 8.0))
    return (image.float() + torch.randn(image.shape) * sigma).round().clamp(0, 255).to(torch.uint8)


class Augmenter:
    """Callable ``(image uint8 CHW, mask bool 1HW) → (image, mask)`` drawing each augmentation with its probability."""

    def __init__(self, spec: AugmentSpec) -> None:
        self.geometric = v2.Compose([
            v2.RandomHorizontalFlip(spec.hflip),
            v2.RandomApply([v2.RandomAffine(degrees=10, translate=(0.05, 0.05), scale=(0.9, 1.1))], p=spec.affine),
            v2.RandomPerspective(distortion_scale=0.15, p=spec.perspective),
        ])  # fmt: skip
        self.photometric: list[tuple[float, Callable[[torch.Tensor], torch.Tensor]]] = [
            (spec.color_jitter, v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02)),
            (spec.blur, v2.GaussianBlur(5, sigma=(0.1, 1.5))),
            (spec.sharpen, v2.RandomAdjustSharpness(2.0, p=1.0)),
            (spec.clahe, _clahe),
            (spec.noise, _noise),
            (spec.jpeg, v2.JPEG((40, 95))),
        ]

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.geometric(tv_tensors.Image(image), tv_tensors.Mask(mask))
        image = image.as_subclass(torch.Tensor)
        for p, transform in self.photometric:
            if p > 0 and torch.rand(()) < p:
                image = transform(image)
        return image, mask.as_subclass(torch.Tensor)


def augmenter_for(spec: AugmentSpec) -> Augmenter | None:
    """None when every probability is zero, so evaluation-like training stays exactly deterministic."""
    return Augmenter(spec) if any(v > 0 for v in spec.model_dump().values()) else None
