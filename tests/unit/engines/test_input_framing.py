"""Input framing as the papers have it: the resize filter is part of the input contract (bicubic, as open_clip's
pretrained transforms), old manifests without it keep resizing bilinearly, and the seed 000 recipes feed whole
images by default with face-crop variants beside them.

Tolerance against open_clip's own transform (PIL bicubic on uint8), in uint8 levels: mean |Δ| ≤ 0.4 and the
99.9th percentile ≤ 1.5 (measured on skimage's coffee: 0.29 and 0.9; PIL rounds to uint8, torch does not). Bilinear,
measured beside it, is more than 3× further off (mean 1.1–1.3 levels, 99.9th percentile 16–18), so the test tells
the filters apart.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from deepsift.engines.manifest import EngineManifest
from deepsift.engines.preprocess import InputContract, preprocess_image
from deepsift.engines.recipes import RECIPE_DIR, load_recipe, recipe_names

SIGLIP = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
OPENAI = {"mean": (0.48145466, 0.4578275, 0.40821073), "std": (0.26862954, 0.26130258, 0.27577711)}
SEED_000_DETECTORS = {"siglip_binary", "siglip_multitask", "prototype_fewshot"}


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real photograph, 400 high × 600 wide (non-square; its shorter side scales to 224 without rounding)."""
    from skimage import data

    return data.coffee()


def open_clip_pixels(rgb: np.ndarray, size: int, resize_mode: str, interpolation: str, stats: dict) -> np.ndarray:
    from open_clip.transform import image_transform

    transform = image_transform(
        size, is_train=False, mean=stats["mean"], std=stats["std"], resize_mode=resize_mode, interpolation=interpolation
    )
    return transform(Image.fromarray(rgb)).numpy()


@pytest.mark.parametrize(
    ("resize_mode", "open_clip_mode", "stats"),
    [("squash", "squash", SIGLIP), ("shorter_center_crop", "shortest", OPENAI)],  # SigLIP-2's and OpenAI CLIP's
)
def test_bicubic_preprocessing_matches_open_clips_transform_on_a_photo(
    photo: np.ndarray, resize_mode: str, open_clip_mode: str, stats: dict
) -> None:
    # Given open_clip's own eval transform of a photo (PIL bicubic), as seed 000 §2.1 feeds it
    expected = open_clip_pixels(photo, 224, open_clip_mode, "bicubic", stats)

    # When the contract resizes it bicubically, and (for comparison) bilinearly
    def ours(interpolation: str) -> np.ndarray:
        contract = InputContract(size=224, resize_mode=resize_mode, interpolation=interpolation, **stats)
        return preprocess_image(photo, contract).numpy()

    levels = 255 * np.asarray(stats["std"])[:, None, None]  # normalised → uint8 levels
    bicubic, bilinear = (np.abs(ours(f) - expected) * levels for f in ("bicubic", "bilinear"))

    # Then bicubic is open_clip's within the stated tolerance, and clearly closer to it than bilinear is
    assert bicubic.mean() <= 0.4 and np.quantile(bicubic, 0.999) <= 1.5
    assert bilinear.mean() > 3 * bicubic.mean()


def test_bicubic_overshoot_is_clamped_like_a_uint8_image(photo: np.ndarray) -> None:
    # Given a hard black/white edge (bicubic rings past both ends), when it is resized bicubically
    edge = np.zeros((64, 64, 3), np.uint8)
    edge[:, 32:] = 255
    contract = InputContract(size=24, interpolation="bicubic", mean=(0.0,) * 3, std=(1.0,) * 3)
    out = preprocess_image(edge, contract)

    # Then no value leaves [0, 1], as none leaves [0, 255] in a PIL resize
    assert out.min() >= 0.0 and out.max() <= 1.0


OLD_MANIFEST = {  # a schema-2 manifest as engines were written before input.interpolation existed
    "schema_version": 2,
    "name": "old",
    "version": 3,
    "recipe": "demo-tiny",
    "recipe_sha256": "0" * 64,
    "detector": "siglip_binary",
    "task": {"kind": "binary", "class_names": ["real", "fake"], "positive_class": "fake"},
    "input": {
        "size": 64,
        "resize_mode": "squash",
        "crop_mode": "face",
        "face_margin": 0.3,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "color_order": "RGB",
    },
    "backend": {"name": "onnxruntime", "version": "1.20.0", "precision": "fp32", "onnx_opset": 17},
    "artifact": "model.onnx",
    "artifact_sha256": "a" * 64,
    "weights_sha256": "b" * 64,
}


def test_an_old_manifest_without_the_filter_still_preprocesses_bilinearly(photo: np.ndarray) -> None:
    # Given a manifest written before the field existed, when the daemon reads it
    manifest = EngineManifest.model_validate_json(json.dumps(OLD_MANIFEST))

    # Then its contract resizes with the antialiased bilinear filter its engine was built with, computed here
    # independently, and not with bicubic
    assert manifest.input.interpolation == "bilinear"
    chw = torch.from_numpy(photo).permute(2, 0, 1).float() / 255
    bilinear = F.interpolate(chw[None], size=(64, 64), mode="bilinear", antialias=True, align_corners=False)[0]
    expected = (bilinear.clamp(0, 1) - 0.5) / 0.5
    torch.testing.assert_close(preprocess_image(photo, manifest.input), expected, atol=1e-5, rtol=0)
    bicubic = manifest.input.model_copy(update={"interpolation": "bicubic"})
    assert (preprocess_image(photo, bicubic) - expected).abs().max() > 0.05


def test_a_new_contract_writes_its_filter_into_the_manifest() -> None:
    manifest = EngineManifest.model_validate(
        OLD_MANIFEST | {"input": {**OLD_MANIFEST["input"], "interpolation": "bicubic"}}
    )
    assert json.loads(manifest.model_dump_json())["input"]["interpolation"] == "bicubic"


def paper_recipes(detectors: set[str]) -> list[str]:
    """Shipped recipes of those detector kinds on a named open_clip tower (not the tiny ones)."""
    return [n for n in recipe_names() if (r := load_recipe(n)).detector in detectors and r.backbone.open_clip]


@pytest.mark.parametrize("name", [n for n in paper_recipes(SEED_000_DETECTORS) if not n.endswith("-face")])
def test_the_seed_000_recipes_feed_whole_images_bicubically(name: str) -> None:
    # Seed 000 §2.1–2.3: HiDF, CiFake, SID_Set and the few-shot sets are whole images through open_clip's transform
    contract = load_recipe(name).input
    assert contract.crop_mode == "full" and contract.interpolation == "bicubic"


@pytest.mark.parametrize("name", [n for n in recipe_names() if n.endswith("-face")])
def test_a_face_variant_is_its_parent_with_face_crops(name: str) -> None:
    # Given a -face recipe and the recipe it is the variant of
    face, parent = load_recipe(name), load_recipe(name.removesuffix("-face"))

    # Then only the name, the description and the crop mode differ: same tower, head, training and pixel maths
    assert face.input.crop_mode == "face" and parent.input.crop_mode == "full"
    assert face.input == parent.input.model_copy(update={"crop_mode": "face"})
    keep = {"name", "description", "input"}
    assert face.model_dump(exclude=keep) == parent.model_dump(exclude=keep)


def test_the_benchmarked_b16_recipe_has_a_face_variant() -> None:
    assert (RECIPE_DIR / "siglip2-binary-b16-224-face.json").exists()
    assert load_recipe("siglip2-binary-b16-224-face").input.crop_mode == "face"


@pytest.mark.parametrize("name", paper_recipes(SEED_000_DETECTORS | {"sd2"}))
def test_a_pretrained_tower_gets_the_filter_and_statistics_it_was_trained_with(name: str) -> None:
    # Given a recipe on a named open_clip tower, when open_clip's preprocessing config of its weights is looked up
    import open_clip

    recipe = load_recipe(name)
    tags = open_clip.list_pretrained_tags_by_model(recipe.backbone.open_clip)
    cfg = open_clip.get_pretrained_cfg(recipe.backbone.open_clip, "openai" if "openai" in tags else tags[0])

    # Then the contract resizes with that filter and normalises with those statistics
    assert recipe.input.interpolation == cfg["interpolation"]
    np.testing.assert_allclose(recipe.input.mean, cfg["mean"])
    np.testing.assert_allclose(recipe.input.std, cfg["std"])
