"""Detector recipes: small declarative JSON files parsed into frozen, typed objects.

A recipe names a detector kind, its backbone, head, input contract and training settings. Unknown
keys are rejected — a value the code silently ignored would be a bug. The recipe hash (of the parsed,
canonical form) is recorded in every engine manifest built from it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engines.preprocess import InputContract

RECIPE_DIR = Path(__file__).parent


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TaskSpec(_Frozen):
    kind: Literal["binary"] = "binary"
    class_names: tuple[str, ...] = ("real", "fake")
    positive_class: str = "fake"


class BackboneSpec(_Frozen):
    """An OpenCLIP image tower: a named open_clip config, or an inline ``vision_cfg`` for tiny towers."""

    open_clip: str | None = Field(default=None, description="open_clip model config name, e.g. ViT-B-16-SigLIP2-256")
    vision_cfg: dict[str, Any] | None = Field(default=None, description="inline open_clip CLIPVisionCfg fields")
    embed_dim: int | None = Field(default=None, description="output width, required with vision_cfg")
    image_size: int | None = Field(default=None, description="overrides the config's image size")
    weights: str | None = Field(default=None, description="local open_clip checkpoint (.safetensors/.bin/.pt) or dir")
    unfreeze_last_blocks: int = Field(default=0, ge=-1, description="0 = frozen tower, -1 = all blocks trainable")

    @model_validator(mode="after")
    def _one_source(self) -> BackboneSpec:
        if (self.open_clip is None) == (self.vision_cfg is None):
            raise ValueError("backbone needs exactly one of open_clip or vision_cfg")
        if self.vision_cfg is not None and self.embed_dim is None:
            raise ValueError("backbone.embed_dim is required with vision_cfg")
        return self


class HeadSpec(_Frozen):
    hidden: tuple[int, ...] = (256,)
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    feature_noise_std: float = Field(default=0.02, ge=0.0, description="Gaussian noise on the embedding in training")
    feature_dropout: float = Field(default=0.1, ge=0.0, lt=1.0, description="dropout on the embedding in training")


class TrainSpec(_Frozen):
    loss: Literal["bce"] = "bce"
    pos_weight: float = 1.0
    optimizer: Literal["adamw"] = "adamw"
    lr: float = 2e-4
    weight_decay: float = 0.01
    batch_size: int = 64
    epochs: int = 20
    amp: Literal["none", "fp16", "bf16"] = "fp16"
    select_by: Literal["f1", "auc", "loss"] = "f1"


class Recipe(_Frozen):
    name: str
    detector: str = Field(description="detector kind in engines.models.DETECTORS")
    description: str = ""
    task: TaskSpec = TaskSpec()
    backbone: BackboneSpec
    head: HeadSpec = HeadSpec()
    input: InputContract
    train: TrainSpec = TrainSpec()

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


def recipe_names() -> list[str]:
    """Names of the recipes shipped with deepsift (one JSON file each in this folder)."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.json"))


def load_recipe(name_or_path: str | Path, **overrides: Any) -> Recipe:
    """Load a shipped recipe by name, or any recipe file by path; ``overrides`` replace top-level keys."""
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPE_DIR / f"{name_or_path}.json"
        if not path.exists():
            raise KeyError(f"unknown recipe {name_or_path!r}; shipped recipes: {', '.join(recipe_names())}")
    data = json.loads(path.read_text())
    data.update(overrides)
    recipe = Recipe.model_validate(data)
    if path.parent == RECIPE_DIR and recipe.name != path.stem:
        raise ValueError(f"recipe file {path.name} declares name {recipe.name!r}; they must match")
    return recipe
