"""Seed 000 §2.2 ("SIDA" recipe): SigLIP-2 encoder with a 3-class head and a SegFormer-style tamper-mask decoder.

The class head reads the pooled output; the decoder reads token maps from several depths: each is projected by a
1×1 conv to a common width, smoothed by a depth-wise conv, and the maps are fused by per-pixel attention gates
over the depths, then a 1×1 conv gives the tamper logit, upsampled to the input resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deepsift.engines.models.backbones import (
    build_image_tower,
    enable_grad_checkpointing,
    set_trainable_blocks,
    tower_blocks,
)
from deepsift.engines.models.outputs import DetectorOutput, MlpClassifier, fake_logit_from_class_logits
from deepsift.engines.models.sections import check_sections
from deepsift.engines.recipes import MaskDecoderSpec, Recipe


def tower_width(tower: nn.Module) -> int:
    """Channel width of a tower's token maps (native open_clip or timm-backed)."""
    trunk = getattr(tower, "trunk", None)
    if trunk is not None:
        return int(trunk.embed_dim)
    return int(tower.transformer.width)


class MaskDecoder(nn.Module):
    """Token maps from several depths → one tamper logit per pixel, fused by attention gates across depths."""

    def __init__(self, in_dim: int, spec: MaskDecoderSpec) -> None:
        super().__init__()
        n, width, k = len(spec.depths), spec.width, spec.smoothing_kernel
        self.project = nn.ModuleList(nn.Conv2d(in_dim, width, 1) for _ in range(n))
        self.smooth = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, k, padding=k // 2, groups=width), nn.BatchNorm2d(width), nn.GELU())
            for _ in range(n)
        )
        self.gate = nn.Sequential(nn.Conv2d(width * n, width, 1), nn.GELU(), nn.Conv2d(width, n, 1))
        self.dropout = nn.Dropout2d(spec.dropout)
        self.classify = nn.Conv2d(width, 1, 1)

    def forward(self, feature_maps: list[torch.Tensor], out_size: tuple[int, int]) -> torch.Tensor:
        maps = [smooth(project(f)) for f, project, smooth in zip(feature_maps, self.project, self.smooth, strict=True)]
        weights = torch.softmax(self.gate(torch.cat(maps, dim=1)), dim=1)  # (N, depths, h, w)
        fused = sum(weights[:, i : i + 1] * m for i, m in enumerate(maps))
        logits = self.classify(self.dropout(fused))
        return F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)[:, 0]


class SiglipMultitaskDetector(nn.Module):
    """Class logits (real/synthetic/tampered) and a full-resolution tamper mask in one pass."""

    def __init__(self, tower: nn.Module, embed_dim: int, recipe: Recipe) -> None:
        super().__init__()
        assert recipe.decoder is not None  # checked by the builder
        n_blocks = len(tower_blocks(tower))
        if any(not 0 <= d < n_blocks for d in recipe.decoder.depths):
            raise ValueError(f"decoder depths {recipe.decoder.depths} outside the tower's {n_blocks} blocks")
        self.tower = tower
        self.depths = list(recipe.decoder.depths)
        self.classifier = MlpClassifier(embed_dim, recipe.head, len(recipe.task.class_names))
        self.decoder = MaskDecoder(tower_width(tower), recipe.decoder)
        self.real_index = recipe.task.class_names.index(recipe.task.real_class)
        set_trainable_blocks(self.tower, recipe.backbone.unfreeze_last_blocks)

    def outputs(self, pixels: torch.Tensor) -> DetectorOutput:
        found = self.tower.forward_intermediates(pixels, indices=self.depths, output_fmt="NCHW")
        class_logits = self.classifier(found["image_features"])
        mask_logits = self.decoder(found["image_intermediates"], tuple(pixels.shape[-2:]))
        return DetectorOutput(
            fake_logit=fake_logit_from_class_logits(class_logits, self.real_index),
            class_logits=class_logits,
            mask_logits=mask_logits,
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.outputs(pixels).fake_logit


def build_siglip_multitask(recipe: Recipe) -> SiglipMultitaskDetector:
    check_sections(recipe, "siglip_multitask", required=("decoder",))
    tower, embed_dim = build_image_tower(recipe.backbone)
    if recipe.backbone.grad_checkpointing:
        enable_grad_checkpointing(tower)
    return SiglipMultitaskDetector(tower, embed_dim, recipe)
