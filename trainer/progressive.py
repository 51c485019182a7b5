"""Progressive resizing as a recipe schedule (seed 000 §2.2): ``train.progressive_resize`` lists lower-resolution
stages, each until a fraction of the optimizer steps; after the last, training runs at the contract's size.

The data loader always yields contract-size batches (workers cannot see the step), and a stage shrinks them on the
training device with the contract's resize op (``resize_pixels``): pixels with its filter, masks bilinear then
thresholded at 0.5, as ``fit_to_square`` does. The towers read their position embeddings at the stage's grid
(``engines.models.resolution``). Validation, the kept checkpoint and the exported engine are always at full size.
"""

from __future__ import annotations

from typing import Any

import torch

from deepsift.engines.preprocess import normalize_image, resize_pixels
from deepsift.engines.recipes import Recipe


def stage_size(recipe: Recipe, progress: float) -> int | None:
    """The input side at ``progress`` (0 → 1) of training; None: the contract's own size."""
    for stage in recipe.train.progressive_resize:
        if progress < stage.until:
            return stage.size
    return None


def resize_batch(batch: dict[str, Any], size: int | None, recipe: Recipe) -> dict[str, Any]:
    """``batch`` with its pixels and masks at ``size``×``size`` (unchanged for None)."""
    if size is None:
        return batch
    contract, pixels = recipe.input, batch["pixels"]
    black, white = (normalize_image(torch.full((3, 1, 1), v, device=pixels.device), contract) for v in (0.0, 1.0))
    # bicubic overshoots; preprocess_image clamps to [0, 1] before normalising, so the same bounds here
    out = dict(batch, pixels=resize_pixels(pixels, size, size, contract.interpolation).clamp(black, white))
    if isinstance(batch.get("mask"), torch.Tensor):
        mask = resize_pixels(batch["mask"][:, None].float(), size, size, "bilinear")
        out["mask"] = (mask[:, 0] >= 0.5).to(batch["mask"].dtype)
    return out
