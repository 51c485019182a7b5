"""Fixtures shared across the suite: a quickly trained demo engine and demo media with ground truth."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import pytest

from deepsift.engines.manifest import BackendSpec, EngineManifest
from deepsift.engines.preprocess import InputContract
from deepsift.engines.recipes import TaskSpec
from deepsift.engines.store import EngineStore

# Small enough for CI (about 30 s on two cores), large enough that the engine separates the demo media.
QUICK_BUDGET = {"train_samples": 1200, "val_samples": 300, "steps": 300, "time_budget_s": 90.0}


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> EngineStore:
    """An engine store holding a demo engine named ``demo`` (face mode), trained with a quick budget."""
    from deepsift.trainer.demo import DemoBudget, train_demo_engine

    store = EngineStore(tmp_path_factory.mktemp("engines"))
    train_demo_engine(store, "demo", DemoBudget(**QUICK_BUDGET), seed=0, log=lambda line: None)
    return store


@pytest.fixture(scope="session")
def demo_media(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """Demo clips and images (real, fake, no face) and their ground truth by file name."""
    from deepsift.trainer.demo import write_demo_media

    folder = tmp_path_factory.mktemp("demo-media")
    truth = write_demo_media(folder, n_videos=2, n_images=1, seconds=2.0)
    with open(truth) as f:
        labels = {row["file"]: row["label"] for row in csv.DictReader(f)}
    return folder, labels


@pytest.fixture(scope="session")
def full_frame_store(tmp_path_factory: pytest.TempPathFactory) -> EngineStore:
    """A store with an untrained tiny engine ``tiny-full`` that scores whole frames (no face detection)."""
    import torch

    from deepsift.engines.models import build_detector
    from deepsift.engines.recipes import load_recipe
    from deepsift.trainer.build import build_onnx_engine

    base = load_recipe("demo-tiny")
    recipe = load_recipe("demo-tiny", input={**base.input.model_dump(), "crop_mode": "full"})
    torch.manual_seed(0)
    store = EngineStore(tmp_path_factory.mktemp("full-engines"))
    build_onnx_engine(build_detector(recipe), recipe, store, "tiny-full", threshold=0.5)
    return store


@pytest.fixture
def engine_manifest() -> Callable[..., EngineManifest]:
    """``engine_manifest(name, **fields)``: a valid binary ONNX Runtime manifest (no artifact behind it) for
    tests of what records, lists or joins engines; ``fields`` override the defaults."""

    def make(name: str = "demo", **fields: object) -> EngineManifest:
        values: dict[str, object] = {
            "name": name,
            "recipe": "demo-tiny",
            "recipe_sha256": "ab" * 32,
            "detector": "siglip_binary",
            "task": TaskSpec(),
            "input": InputContract(size=64),
            "backend": BackendSpec(name="onnxruntime", version="1.20", onnx_opset=18),
            "artifact": "model.onnx",
            "artifact_sha256": "cd" * 32,
            "weights_sha256": "ef" * 32,
        }
        return EngineManifest(**(values | fields))

    return make
