"""Held-out figures of every tiny recipe on the offline forgery task, trained by the real loop on CPU: the numbers
that say a change to the trainer did not make the recipes learn worse.

The task and the budgets are the training tests' (``tests/unit/trainer/test_training.py``): 480 train, 120 val and
120 held-out test face crops (real, tampered with masks, synthetic), seed 0; demo-tiny 150 steps, tiny-multitask
150, tiny-fusion 100, tiny-sd2 120 from the binary run's image tower, tiny-fewshot prototypes on the binary run's
encoder. Each line is one recipe's test figures as JSON: AUC, AP, and accuracy/F1 at its validation threshold
(``@val``, comparable across trees) and, where the tree has it, at the paper's decision rule (``@paper``).

    .venv/bin/python benchmarks/tiny_recipes.py                      # every tiny recipe (about 8 min on 2 cores)
    .venv/bin/python benchmarks/tiny_recipes.py --recipes tiny-multitask --multitask-s22
    PYTHONPATH=/path/to/other/tree/shim .venv/bin/python benchmarks/tiny_recipes.py   # the same on another tree

``--multitask-s22`` also trains tiny-multitask with seed 000 §2.2's training additions switched on (augmentation
after the resize and pad, motion blur among the blurs, progressive resizing from half the input size), so the
cost of the paper's curriculum on this small task is a figure too.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from deepsift.engines.models import build_detector
from deepsift.engines.models.backbones import build_clip
from deepsift.engines.recipes import Recipe, load_recipe
from deepsift.trainer.data import dataset_for, read_manifest, relabel, write_manifest
from deepsift.trainer.evaluate import evaluation_report, predict_dataset
from deepsift.trainer.loop import FitOptions, fit

STEPS = {"demo-tiny": 150, "tiny-multitask": 150, "tiny-fusion": 100, "tiny-sd2": 120}
SD2_TYPES = {"tampered": "face_swapping", "synthetic": "entire_face_synthesis"}
S22_TRAINING = {
    "augment": {"hflip": 0.5, "affine": 0.3, "perspective": 0.2, "jpeg": 0.3, "noise": 0.2, "color_jitter": 0.3,
                "blur": 0.1, "motion_blur": 0.05, "sharpen": 0.1, "clahe": 0.2, "stage": "resized"},
    "progressive_resize": [{"until": 0.5, "size": 32}],
}  # fmt: skip


def figures(report: dict) -> dict[str, float]:
    """AUC/AP, and accuracy/F1 at the validation threshold (trees before issue 12 put them in ``image``; later
    ones there at the paper's rule, and at the validation threshold in ``at_validation_threshold``)."""
    image = report["image"]
    tuned = report.get("at_validation_threshold", {}).get("image", image)
    out = {k: round(float(image[k]), 4) for k in ("roc_auc", "average_precision")}
    out |= {f"{k}@val": round(float(tuned[k]), 4) for k in ("accuracy", "f1_macro")}
    if "at_validation_threshold" in report:
        out |= {f"{k}@paper": round(float(image[k]), 4) for k in ("accuracy", "f1_macro")}
    if "classes" in report:
        out["class_accuracy"] = round(float(report["classes"]["accuracy"]), 4)
    if "masks" in report:
        out["pixel_iou"] = round(float(report["masks"]["pixel_iou"]), 4)
    return out


def train(recipe: Recipe, manifest: Path, out: Path, steps: int, model: torch.nn.Module | None = None):
    torch.manual_seed(0)
    model = model or build_detector(recipe)
    options = FitOptions(out=out, max_steps=steps, eval_every=steps // 2, workers=1, progress=False)
    result = fit(recipe, model, dataset_for(manifest, "train", recipe), dataset_for(manifest, "val", recipe), options)
    test = dataset_for(manifest, "test", recipe)
    return model, evaluation_report(recipe, test, predict_dataset(model, recipe, test), threshold=result.threshold)


def pretrained_tiny_clip(recipe: Recipe, binary: torch.nn.Module, path: Path) -> Recipe:
    """SD² adapts a pretrained CLIP: the binary run's image tower with a random text tower, as in the tests."""
    clip, _ = build_clip(recipe.backbone)
    clip.visual.load_state_dict(
        {k.removeprefix("tower."): v for k, v in binary.state_dict().items() if k.startswith("tower.")}
    )
    torch.save(clip.state_dict(), path)
    return recipe.model_copy(update={"backbone": recipe.backbone.model_copy(update={"weights": str(path)})})


def fewshot(manifest: Path, binary: torch.nn.Module, work: Path) -> dict:
    from deepsift.trainer.fewshot import fit_prototypes, load_encoder

    recipe = load_recipe("tiny-fewshot")
    detector = build_detector(recipe)
    torch.save(binary.state_dict(), work / "binary.pt")
    load_encoder(detector, work / "binary.pt")
    train, val = dataset_for(manifest, "train", recipe), dataset_for(manifest, "val", recipe)
    result = fit_prototypes(recipe, detector, train, val)
    test = dataset_for(manifest, "test", recipe)
    return evaluation_report(recipe, test, predict_dataset(detector, recipe, test), threshold=result.threshold)


def with_s22_training(recipe: Recipe) -> Recipe:
    train = recipe.train.model_dump() | S22_TRAINING
    return Recipe.model_validate(recipe.model_dump() | {"train": train, "name": f"{recipe.name}+s22"})


def run(names: list[str], s22: bool, work: Path) -> None:
    from deepsift.trainer.demo import scene_factory
    from deepsift.trainer.synthetic import write_forgery_dataset

    manifest = write_forgery_dataset(work / "forgery", scene_factory(), {"train": 480, "val": 120, "test": 120}, seed=0)
    binary = None
    if {"demo-tiny", "tiny-sd2", "tiny-fewshot"} & set(names):
        started = time.monotonic()
        binary, report = train(load_recipe("demo-tiny"), manifest, work / "binary", STEPS["demo-tiny"])
        print(json.dumps({"recipe": "demo-tiny", **figures(report), "s": round(time.monotonic() - started)}))
    for name in [n for n in names if n != "demo-tiny"]:
        started = time.monotonic()
        if name == "tiny-fewshot":
            report = fewshot(manifest, binary, work)
        elif name == "tiny-sd2":
            sd2 = write_manifest(relabel(read_manifest(manifest), SD2_TYPES), manifest.parent / "sd2.jsonl")
            recipe = pretrained_tiny_clip(load_recipe(name), binary, work / "clip.pt")
            _, report = train(recipe, sd2, work / name, STEPS[name])
        else:
            _, report = train(load_recipe(name), manifest, work / name, STEPS[name])
        print(json.dumps({"recipe": name, **figures(report), "s": round(time.monotonic() - started)}), flush=True)
    if s22:
        started = time.monotonic()
        recipe = with_s22_training(load_recipe("tiny-multitask"))
        _, report = train(recipe, manifest, work / "s22", STEPS["tiny-multitask"])
        print(json.dumps({"recipe": recipe.name, **figures(report), "s": round(time.monotonic() - started)}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=[*STEPS, "tiny-fewshot"])
    parser.add_argument("--multitask-s22", action="store_true", help="also tiny-multitask with §2.2's training")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps({"tree": str(Path(sys.modules["deepsift.engines"].__file__).parents[0])}))
    with tempfile.TemporaryDirectory() as work:
        run(args.recipes, args.multitask_s22, Path(work))
    return 0


if __name__ == "__main__":
    sys.exit(main())
