"""Progressive resizing as a recipe schedule (seed 000 §2.2): ``train.progressive_resize`` lists lower-resolution
stages, each until a fraction of the optimizer steps; after the last, training runs at the contract's size.

The data loader always yields contract-size batches (workers cannot see the step), and a stage shrinks them on the
training device: pixels with the contract's antialiased filter, masks bilinear then thresholded at 0.5 as
``fit_to_square`` does. The towers read their position embeddings at the stage's grid
(``engines.models.resolution``). Validation, the kept checkpoint and the exported engine are always at full size.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

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
    pixels = F.interpolate(pixels, size=(size, size), mode=contract.interpolation, antialias=True, align_corners=False)
    mean = torch.tensor(contract.mean, device=pixels.device)[:, None, None]
    std = torch.tensor(contract.std, device=pixels.device)[:, None, None]
    # bicubic overshoots; preprocess_image clamps to [0, 1] before normalising, so the same bounds here
    out = dict(batch, pixels=torch.clamp(pixels, -mean / std, (1 - mean) / std))
    if isinstance(batch.get("mask"), torch.Tensor):
        mask = F.interpolate(
            batch["mask"][:, None].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        out["mask"] = (mask[:, 0] >= 0.5).to(batch["mask"].dtype)
    return out
