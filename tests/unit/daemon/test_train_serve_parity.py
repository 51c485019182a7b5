"""Train/serve skew guard: the pixels the trainer feeds the model are the pixels the daemon feeds the
engine, for a non-square image, with every preprocessing fact read from the built engine's manifest."""

from __future__ import annotations

import numpy as np
import pytest
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


@pytest.fixture(scope="module")
def padded_engine(tmp_path_factory):
    """A full-frame engine whose contract pads the longest side (aspect ratio matters) and uses BGR order."""
    base = load_recipe("demo-tiny")
    contract = {**base.input.model_dump(), "crop_mode": "full", "resize_mode": "longest_pad", "color_order": "BGR",
                "mean": [0.4, 0.45, 0.5], "std": [0.2, 0.25, 0.3]}  # fmt: skip
    recipe = load_recipe("demo-tiny", input=contract)
    torch.manual_seed(3)
    model = build_detector(recipe).eval()
    store = EngineStore(tmp_path_factory.mktemp("engines"))
    build_onnx_engine(model, recipe, store, "padded")
    return recipe, model, load_engine(store.resolve("padded"))


def test_daemon_pixels_and_scores_match_training_on_a_non_square_image(padded_engine, tmp_path):
    recipe, model, engine = padded_engine
    # Given a 90×160 image with structure (a gradient and a bright block off-centre), saved losslessly
    y, x = np.mgrid[0:90, 0:160]
    frame = np.stack([x * 255 // 159, y * 255 // 89, (x + y) % 256], axis=-1).astype(np.uint8)
    frame[10:40, 100:150] = (250, 20, 20)
    path = tmp_path / "wide.png"
    Image.fromarray(frame).save(path)
    # When the trainer preprocesses it with the recipe, and the daemon prepares it from the engine manifest
    trained_on = preprocess_image(frame, recipe.input)[None]
    config = JudgeConfig(32, AggregationRule.parse("mean"), 0.1, "pyav", 10**8)
    served = prepare(MediaJob("j", path.as_uri(), path=path), engine.manifest, None, config)
    # Then the manifest carries the recipe's contract, and the pixels are identical
    assert engine.manifest.input == recipe.input
    np.testing.assert_array_equal(served.pixels, trained_on.numpy())
    # and the aspect ratio survived: rows above and below the image are padding (black, normalised)
    # (mean/std are listed in the engine's channel order, here B, G, R)
    pad_value = (0.0 - np.array(recipe.input.mean)) / np.array(recipe.input.std)
    np.testing.assert_allclose(served.pixels[0, :, 0, 0], pad_value, atol=1e-6)
    assert not np.allclose(served.pixels[0, :, 32, 32], pad_value)
    # and the engine's logit equals the torch model's on the training pixels
    with torch.no_grad():
        expected = model(trained_on).numpy()
    np.testing.assert_allclose(engine.logits(served.pixels), expected, atol=1e-4)
