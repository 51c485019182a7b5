"""Detector model code. Builders are registered by detector kind; recipes name the kind."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from engines.models.siglip_binary import build_siglip_binary
from engines.recipes import Recipe
from engines.registry import Registry

DETECTORS: Registry[Callable[[Recipe], nn.Module]] = Registry("detector")
DETECTORS.register("siglip_binary")(build_siglip_binary)


def build_detector(recipe: Recipe) -> nn.Module:
    """Build the recipe's detector (random weights unless the recipe names local backbone weights)."""
    return DETECTORS.get(recipe.detector)(recipe)
