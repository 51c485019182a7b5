"""Seed 000 §2.1: SigLIP-2 image tower → L2-normalised embedding → MLP head → one logit.

The paper labels FAKE=0 and REAL=1; deepsift's logit is for *fake* (P(fake) = sigmoid(logit)), which
is the same classifier with the sign of the last layer flipped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deepsift.engines.models.backbones import build_image_tower, set_trainable_blocks
from deepsift.engines.models.outputs import DetectorOutput
from deepsift.engines.recipes import HeadSpec, Recipe


class MlpHead(nn.Module):
    """Linear → ReLU → Dropout per hidden width, then Linear → 1 logit."""

    def __init__(self, in_dim: int, spec: HeadSpec) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width in spec.hidden:
            layers += [nn.Linear(in_dim, width), nn.ReLU(inplace=True), nn.Dropout(spec.dropout)]
            in_dim = width
        layers.append(nn.Linear(in_dim, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features).squeeze(-1)


class SiglipBinaryDetector(nn.Module):
    """Binary real/fake detector; ``forward`` returns one fake-logit per image."""

    def __init__(self, tower: nn.Module, embed_dim: int, head: HeadSpec, unfreeze_last_blocks: int = 0) -> None:
        super().__init__()
        self.tower = tower
        self.head = MlpHead(embed_dim, head)
        self.feature_noise_std = head.feature_noise_std
        self.feature_dropout = nn.Dropout(head.feature_dropout)
        set_trainable_blocks(self.tower, unfreeze_last_blocks)

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.tower(pixels), dim=-1)

    def outputs(self, pixels: torch.Tensor) -> DetectorOutput:
        """The fake-logit with its class logits (real 0, fake) — the interface every detector shares."""
        logit = self(pixels)
        return DetectorOutput(fake_logit=logit, class_logits=torch.stack([torch.zeros_like(logit), logit], dim=1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self.embed(pixels)
        if self.training:
            if self.feature_noise_std > 0:
                features = features + torch.randn_like(features) * self.feature_noise_std
            features = self.feature_dropout(features)
        return self.head(features)


def build_siglip_binary(recipe: Recipe) -> SiglipBinaryDetector:
    tower, embed_dim = build_image_tower(recipe.backbone)
    return SiglipBinaryDetector(tower, embed_dim, recipe.head, recipe.backbone.unfreeze_last_blocks)
