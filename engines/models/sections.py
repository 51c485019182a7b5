"""Each detector kind names the optional recipe sections it reads; any other one present is refused, so a recipe
value the code would silently ignore becomes an error at build time."""

from __future__ import annotations

from deepsift.engines.recipes import Recipe

OPTIONAL_SECTIONS = ("decoder", "cnn", "prompt", "clam", "text_labels", "fewshot")


def check_sections(recipe: Recipe, detector: str, required: tuple[str, ...] = (), with_text: bool = False) -> None:
    """Refuse a recipe that lacks a ``required`` section, carries one the detector ignores, or mismatches text."""
    for section in OPTIONAL_SECTIONS:
        present = getattr(recipe, section) is not None
        if section in required and not present:
            raise ValueError(f"recipe {recipe.name!r}: detector {detector} needs a {section!r} section")
        if present and section not in required:
            raise ValueError(f"recipe {recipe.name!r}: detector {detector} does not use a {section!r} section")
    if recipe.backbone.with_text != with_text:
        state = "needs" if with_text else "does not use"
        raise ValueError(f"recipe {recipe.name!r}: detector {detector} {state} backbone.with_text")
