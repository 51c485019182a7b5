"""Detector model code. Builders are registered by detector kind; recipes name the kind.

Every detector's ``forward(pixels)`` gives one fake-logit per image — the engine contract. Detectors with more
to say (class logits, tamper masks, embeddings) also have ``outputs(pixels) -> DetectorOutput``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from deepsift.engines.models.backbones import enable_grad_checkpointing
from deepsift.engines.models.clip_fusion import build_clip_resnet_fusion
from deepsift.engines.models.prototype import build_prototype
from deepsift.engines.models.sd2 import build_sd2
from deepsift.engines.models.sections import check_sections
from deepsift.engines.models.siglip_binary import build_siglip_binary
from deepsift.engines.models.siglip_multitask import build_siglip_multitask
from deepsift.engines.recipes import Recipe
from deepsift.engines.registry import Registry

DETECTORS: Registry[Callable[[Recipe], nn.Module]] = Registry("detector")


@DETECTORS.register("siglip_binary")
def _siglip_binary(recipe: Recipe) -> nn.Module:
    """Seed 000 §2.1; gradient checkpointing applies to the tower when blocks are unfrozen."""
    check_sections(recipe, "siglip_binary")
    model = build_siglip_binary(recipe)
    if recipe.backbone.grad_checkpointing:
        enable_grad_checkpointing(model.tower)
    return model


DETECTORS.register("siglip_multitask")(build_siglip_multitask)
DETECTORS.register("clip_resnet_fusion")(build_clip_resnet_fusion)
DETECTORS.register("sd2")(build_sd2)
DETECTORS.register("prototype_fewshot")(build_prototype)


def build_detector(recipe: Recipe) -> nn.Module:
    """Build the recipe's detector (random weights unless the recipe names local backbone weights)."""
    return DETECTORS.get(recipe.detector)(recipe)
