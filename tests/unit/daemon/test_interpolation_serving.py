"""The resize filter travels with the engine: a bicubic recipe builds a manifest that says bicubic, and the daemon
serves exactly the pixels the trainer made with it (not the bilinear ones)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from deepsift.daemon.pipeline import JudgeConfig, MediaJob, prepare
from deepsift.engines.aggregate import AggregationRule
from deepsift.engines.backends import load_engine
from deepsift.engines.models import build_detector
from deepsift.engines.preprocess import preprocess_image
from deepsift.engines.recipes import load_recipe
from deepsift.engines.store import EngineStore
from deepsift.trainer.build import build_onnx_engine


def test_a_bicubic_engine_is_served_the_bicubic_pixels_it_was_trained_on(tmp_path) -> None:
    # Given a full-image engine built from a bicubic contract
    base = load_recipe("demo-tiny")
    recipe = load_recipe(
        "demo-tiny", input={**base.input.model_dump(), "crop_mode": "full", "interpolation": "bicubic"}
    )
    torch.manual_seed(0)
    store = EngineStore(tmp_path / "engines")
    build_onnx_engine(build_detector(recipe).eval(), recipe, store, "bicubic")
    engine = load_engine(store.resolve("bicubic"))
    # and a photo, 300 × 451, saved losslessly
    from skimage import data

    path = tmp_path / "cat.png"
    Image.fromarray(data.chelsea()).save(path)

    # When the daemon prepares it from the engine's manifest
    config = JudgeConfig(32, AggregationRule.parse("mean"), 0.1, "pyav", 10**8)
    served = prepare(MediaJob("j", path.as_uri(), path=path), engine.manifest, None, config)

    # Then the manifest records bicubic, and the pixels are the trainer's bicubic ones, not the bilinear ones
    assert engine.manifest.input.interpolation == "bicubic"
    trained_on = preprocess_image(data.chelsea(), recipe.input)[None].numpy()
    np.testing.assert_array_equal(served.pixels, trained_on)
    bilinear = recipe.input.model_copy(update={"interpolation": "bilinear"})
    assert np.abs(served.pixels - preprocess_image(data.chelsea(), bilinear)[None].numpy()).max() > 0.05
