"""Progressive resizing as a recipe schedule (seed 000 §2.2): stages before the contract's size, batches shrunk on
the device with their masks, the real loop training at each stage's size and validating at the full one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from deepsift.engines.models import build_detector
from deepsift.engines.recipes import Recipe, load_recipe
from deepsift.trainer.data import dataset_for
from deepsift.trainer.loop import FitOptions, fit
from deepsift.trainer.progressive import resize_batch, stage_size


def progressive(recipe: Recipe, stages: list[dict], **train: object) -> Recipe:
    return Recipe.model_validate(
        recipe.model_dump() | {"train": recipe.train.model_dump() | {"progressive_resize": stages, **train}}
    )


def test_the_stage_follows_the_share_of_steps_done() -> None:
    recipe = progressive(load_recipe("tiny-multitask"), [{"until": 0.25, "size": 16}, {"until": 0.5, "size": 32}])
    assert [stage_size(recipe, p) for p in (0.0, 0.24, 0.25, 0.49, 0.5, 0.99)] == [16, 16, 32, 32, None, None]
    assert stage_size(load_recipe("tiny-multitask"), 0.0) is None


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([{"until": 0.5, "size": 32}, {"until": 0.25, "size": 48}], "must grow"),
        ([{"until": 0.25, "size": 48}, {"until": 0.5, "size": 32}], "must grow"),
        ([{"until": 0.5, "size": 64}], "below the input size 64"),
        ([{"until": 1.0, "size": 32}], "less than 1"),
    ],
)
def test_a_schedule_out_of_order_or_not_below_the_input_is_refused(stages, message) -> None:
    with pytest.raises(ValidationError, match=message):
        progressive(load_recipe("tiny-multitask"), stages)


def test_a_batch_shrinks_with_its_mask_and_stays_in_the_normalised_range() -> None:
    recipe = load_recipe("siglip2-multitask-b16-256")  # bicubic, mean/std 0.5: pixels in [-1, 1]
    pixels = torch.where(torch.rand(2, 3, 64, 64) > 0.5, 1.0, -1.0)  # sharp edges make bicubic overshoot
    mask = torch.zeros(2, 64, 64)
    mask[:, :, :32] = 1.0
    out = resize_batch({"pixels": pixels, "mask": mask, "target": torch.tensor([0, 1])}, 32, recipe)
    assert out["pixels"].shape == (2, 3, 32, 32) and out["mask"].shape == (2, 32, 32)
    assert out["pixels"].min() >= -1.0 and out["pixels"].max() <= 1.0
    assert out["mask"][:, :, :16].all() and not out["mask"][:, :, 16:].any()
    assert out["target"].tolist() == [0, 1] and resize_batch(out, None, recipe) is out


def test_training_runs_each_stage_at_its_size_and_validates_at_full_size(forgery_small: Path, tmp_path: Path) -> None:
    # Given tiny-multitask at 32 px for the first half of 4 steps, with an EMA (it pairs parameters by order)
    recipe = progressive(load_recipe("tiny-multitask"), [{"until": 0.5, "size": 32}], batch_size=8, ema_decay=0.5)
    model = build_detector(recipe)
    seen: list[tuple[bool, int]] = []

    def record(module: torch.nn.Module, args: tuple[torch.Tensor]) -> None:
        seen.append((module.training, args[0].shape[-1]))

    model.tower.conv1.register_forward_pre_hook(record)  # the patch embedding: every forward passes it

    # When the real loop trains it, validating after steps 2 and 4
    options = FitOptions(out=tmp_path, max_steps=4, eval_every=2, progress=False)
    result = fit(recipe, model, dataset_for(forgery_small, "train", recipe), dataset_for(forgery_small, "val", recipe),
                 options)  # fmt: skip

    # Then steps 1–2 saw 32 px batches and steps 3–4 the contract's 64 px; every validation ran at 64 px
    assert [size for training, size in seen if training] == [32, 32, 64, 64]
    assert {size for training, size in seen if not training} == {64}
    assert len(result.history) == 2 and (result.run_dir / "best.pt").exists()
    # and the kept weights load into a detector built at full size
    build_detector(load_recipe("tiny-multitask")).load_state_dict(torch.load(result.run_dir / "best.pt"))


@pytest.fixture(scope="module")
def forgery_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from deepsift.trainer.demo import scene_factory
    from deepsift.trainer.synthetic import write_forgery_dataset

    out = tmp_path_factory.mktemp("forgery")
    return write_forgery_dataset(out, scene_factory(), {"train": 32, "val": 12}, seed=0)


def test_a_stage_size_the_tower_cannot_take_is_refused_before_any_step(forgery_small: Path, tmp_path: Path) -> None:
    recipe = progressive(load_recipe("tiny-multitask"), [{"until": 0.5, "size": 36}])
    train, val = dataset_for(forgery_small, "train", recipe), dataset_for(forgery_small, "val", recipe)
    with pytest.raises(ValueError, match="not a multiple"):
        fit(recipe, build_detector(recipe), train, val, FitOptions(out=tmp_path, max_steps=2, progress=False))
    assert not (tmp_path / "last.pt").exists()
