"""Seed 000 §2.2's augmentations as the recipe orders them: on the decoded image, or after the contract's resize and
pad (``augment.stage``); motion blur among the blurs, at most one of blur, motion blur and sharpening per image;
both stages' dtypes kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from deepsift.engines.preprocess import normalize_image, resize_image
from deepsift.engines.recipes import AugmentSpec, load_recipe
from deepsift.trainer.augment import Augmenter, augmenter_for
from deepsift.trainer.data import ManifestDataset, ManifestRow

TAMPERED = ManifestRow(path="b.png", label="fake", split="train", manipulation="tampered", mask_path="b_mask.png")


class Recorder:
    """An augmentation that records what it is handed and returns a blank image with a full mask."""

    def __init__(self, stage: str) -> None:
        self.stage, self.seen = stage, []

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.seen.append((tuple(image.shape), image.dtype, float(image.max()), tuple(mask.shape)))
        return torch.zeros_like(image), torch.ones_like(mask)


@pytest.fixture
def tampered(tmp_path: Path) -> Path:
    """A 60×100 image with a mask over its left half."""
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 100, 3), dtype=np.uint8)).save(tmp_path / "b.png")
    mask = np.zeros((60, 100), np.uint8)
    mask[:, :50] = 255
    Image.fromarray(mask).save(tmp_path / "b_mask.png")
    return tmp_path


@pytest.mark.parametrize(
    ("stage", "shape", "dtype", "top"),
    [("decoded", (3, 60, 100), torch.uint8, 255.0), ("resized", (3, 64, 64), torch.float32, 1.0)],
)
def test_the_augmentation_sees_the_pixels_its_stage_names(tampered: Path, stage, shape, dtype, top) -> None:
    # Given the 64 px longest-side-pad recipe and an augmentation at one stage
    recipe, recorder = load_recipe("tiny-multitask"), Recorder(stage)

    # When an item is read
    item = ManifestDataset([TAMPERED], tampered, recipe, recorder)[0]

    # Then the augmentation saw the decoded uint8 image, or the model-size float image in [0, 1] (pad included)
    [(seen_shape, seen_dtype, seen_max, mask_shape)] = recorder.seen
    assert (seen_shape, seen_dtype, mask_shape) == (shape, dtype, (1, *shape[1:])) and 0.5 * top < seen_max <= top
    # and what it returned is what the item holds: after the resize for decoded, as it is for resized
    blank = normalize_image(torch.zeros(3, 64, 64), recipe.input)
    torch.testing.assert_close(item["pixels"], blank)
    full = item["mask"].bool()
    assert full.all() if stage == "resized" else (full[13:51].all() and not full[:13].any() and not full[51:].any())


def test_augmenting_after_the_pad_can_move_content_into_the_padding(tampered: Path) -> None:
    # Given a 60×100 image: under the 64 px pad contract, 38 content rows with 13 black rows above them
    recipe = load_recipe("tiny-multitask")
    plain = resize_image(np.asarray(Image.open(tampered / "b.png")), recipe.input)
    assert plain[:, :13].abs().sum() == 0 and plain[:, 13].abs().sum() > 0
    black = normalize_image(torch.zeros(3, 64, 64), recipe.input)[:, :13]

    def padding_touched(stage: str) -> int:
        augment = augmenter_for(AugmentSpec(affine=1.0, stage=stage))
        torch.manual_seed(0)
        items = [ManifestDataset([TAMPERED], tampered, recipe, augment)[0]["pixels"] for _ in range(12)]
        return sum(not torch.allclose(p[:, :13], black) for p in items)

    # Then rotations and shifts after the pad reach the padding rows; before it, the pad always stays black
    assert padding_touched("resized") > 0 and padding_touched("decoded") == 0


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_motion_blur_spreads_a_point_along_a_line_and_keeps_the_dtype(dtype) -> None:
    image = torch.zeros(3, 21, 21)
    image[:, 10, 10] = 1.0
    image = (image * 255).to(torch.uint8) if dtype == torch.uint8 else image
    torch.manual_seed(1)
    blurred = Augmenter(AugmentSpec(motion_blur=1.0))(image, torch.zeros(1, 21, 21, dtype=torch.bool))[0]
    assert blurred.dtype == dtype
    lit = (blurred[0].float() > 0).sum()
    assert 2 <= lit <= 9 and blurred[0, 10, 10] < image[0, 10, 10]  # a 3–7 px line, not a disc or nothing


def test_blur_motion_blur_and_sharpening_are_one_choice() -> None:
    # Given an augmenter whose three filters are counted instead of run
    augmenter = Augmenter(AugmentSpec(blur=0.2, motion_blur=0.3, sharpen=0.1))
    counts = [0, 0, 0]

    def counter(i: int):
        def count(image: torch.Tensor) -> torch.Tensor:
            counts[i] += 1
            return image + 1

        return count

    augmenter.filters = [(p, counter(i)) for i, (p, _) in enumerate(augmenter.filters)]
    torch.manual_seed(0)
    applied = [int(augmenter._one_filter(torch.zeros(1)).item()) for _ in range(4000)]

    # Then no image gets two of them, and each comes at its own probability
    assert max(applied) == 1
    assert [round(c / 4000, 2) for c in counts] == pytest.approx([0.2, 0.3, 0.1], abs=0.03)
    with pytest.raises(ValidationError, match="one choice"):
        AugmentSpec(blur=0.5, motion_blur=0.4, sharpen=0.2)
    assert AugmentSpec(blur=0.33, motion_blur=0.56, sharpen=0.11).sharpen == 0.11  # 1, in floats a hair over


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_every_photometric_augmentation_keeps_the_stage_dtype_and_range(dtype) -> None:
    spec = AugmentSpec(jpeg=1.0, noise=1.0, color_jitter=1.0, clahe=1.0, sharpen=1.0)
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    image = (image * 255).to(torch.uint8) if dtype == torch.uint8 else image
    out = Augmenter(spec)(image, torch.zeros(1, 32, 32, dtype=torch.bool))[0]
    assert out.dtype == dtype and out.shape == image.shape and not torch.equal(out, image)
    assert float(out.min()) >= 0 and float(out.max()) <= (255 if dtype == torch.uint8 else 1.0)


def test_the_multitask_recipes_augment_as_section_2_2_orders_it() -> None:
    for name in ("siglip2-multitask-b16-256", "siglip2-multitask-l16-384"):
        augment = load_recipe(name).train.augment
        assert augment.stage == "resized" and augment.motion_blur > 0 and augment.clahe == 0.2, name
