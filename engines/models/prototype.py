"""Seed 000 §2.3: prototype few-shot adaptation on a frozen encoder.

z = f(x)/‖f(x)‖; each class prototype is the L2-normalised mean of its support embeddings; P(c|x) =
softmax_c(−‖z − p_c‖² / τ) with τ = 1, averaged over the image and its horizontal flip. The prototypes are
buffers, so a fitted detector is a state_dict like any other and exports to an engine the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deepsift.engines.models.backbones import build_image_tower
from deepsift.engines.models.outputs import DetectorOutput
from deepsift.engines.models.sections import check_sections
from deepsift.engines.recipes import Recipe


class PrototypeDetector(nn.Module):
    """Nearest-prototype classifier over a frozen tower's normalised embeddings."""

    def __init__(self, tower: nn.Module, embed_dim: int, recipe: Recipe) -> None:
        super().__init__()
        assert recipe.fewshot is not None  # checked by the builder
        self.tower = tower.requires_grad_(False)
        self.tau = recipe.fewshot.tau
        self.hflip_tta = recipe.fewshot.hflip_tta
        self.real_index = recipe.task.class_names.index(recipe.task.real_class)
        self.fake_index = recipe.task.class_names.index(recipe.task.positive_class)
        self.register_buffer("prototypes", torch.zeros(len(recipe.task.class_names), embed_dim))

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.tower(pixels), dim=-1)

    @torch.no_grad()
    def set_prototypes(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Prototypes from support embeddings (already normalised) and their class indices."""
        for c in range(len(self.prototypes)):
            members = embeddings[labels == c]
            if len(members) == 0:
                raise ValueError(f"the support set has no example of class {c}")
            self.prototypes[c] = F.normalize(members.mean(dim=0), dim=-1)

    def squared_distances(self, z: torch.Tensor) -> torch.Tensor:
        """‖z − p_c‖² for every image and prototype, written out so it exports to ONNX."""
        return (z[:, None, :] - self.prototypes[None]).pow(2).sum(dim=-1)

    def class_probabilities(self, pixels: torch.Tensor) -> torch.Tensor:
        views = [pixels, pixels.flip(-1)] if self.hflip_tta else [pixels]
        probs = [torch.softmax(-self.squared_distances(self.embed(v)) / self.tau, dim=-1) for v in views]
        return torch.stack(probs).mean(dim=0)

    def outputs(self, pixels: torch.Tensor) -> DetectorOutput:
        probs = self.class_probabilities(pixels).clamp_min(1e-12)
        logits = probs.log()
        return DetectorOutput(fake_logit=logits[:, self.fake_index] - logits[:, self.real_index], class_logits=logits)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.outputs(pixels).fake_logit


def build_prototype(recipe: Recipe) -> PrototypeDetector:
    check_sections(recipe, "prototype_fewshot", required=("fewshot",))
    if recipe.task.kind != "binary" or recipe.backbone.unfreeze_last_blocks != 0:
        raise ValueError(f"recipe {recipe.name!r}: prototype few-shot is binary on a frozen encoder (seed 000 §2.3)")
    tower, embed_dim = build_image_tower(recipe.backbone)
    return PrototypeDetector(tower, embed_dim, recipe)
