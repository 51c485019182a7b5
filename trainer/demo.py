"""The demo engine and demo media: everything ``make demo`` needs, made offline in a few minutes.

The demo detector is the seed 000 binary detector on a tiny ViT, trained on the synthetic forgery task
of ``trainer.synthetic``. Demo media are H.264 clips and images of the same kind with known ground
truth. This shows the machinery end to end; it is not a deepfake detector.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deepsift.engines.faces import MtcnnFaceDetector, square_crop
from deepsift.engines.manifest import EngineManifest
from deepsift.engines.media import write_video
from deepsift.engines.models import build_detector
from deepsift.engines.preprocess import InputContract, preprocess_image
from deepsift.engines.recipes import load_recipe
from deepsift.engines.store import EngineStore
from deepsift.trainer.build import build_onnx_engine
from deepsift.trainer.fit import fit_binary, predict_p_fake
from deepsift.trainer.metrics import binary_metrics, youden_threshold
from deepsift.trainer.synthetic import SceneFactory, jitter_box, jpeg_roundtrip

DEMO_RECIPE = "demo-tiny"


@dataclass(frozen=True)
class DemoBudget:
    """How much work the demo engine gets: the defaults take about two minutes on two CPU cores."""

    train_samples: int = 3000
    val_samples: int = 400
    steps: int = 700
    time_budget_s: float = 300.0  # a safety cap; on an idle 2-core machine the steps finish in about a minute


def scene_factory() -> SceneFactory:
    """The synthetic scene factory, with the face box found by the same detector the daemon uses."""
    from skimage import data

    boxes = MtcnnFaceDetector().detect([data.astronaut()])[0]
    if not boxes:
        raise RuntimeError("MTCNN found no face in the demo face photo")
    return SceneFactory.from_skimage(boxes[0])


def make_samples(
    factory: SceneFactory, contract: InputContract, n: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` preprocessed face crops, half of them forged, cut exactly as the daemon cuts faces."""
    rng = np.random.default_rng(seed)
    pixels, labels = [], []
    for i in range(n):
        fake = i % 2 == 1
        photo = factory.forged_photo(factory.random_forgery(rng) if fake else None)
        frame, box = factory.render(photo, factory.random_view(rng), background=int(rng.integers(100)))
        crop = square_crop(frame, jitter_box(box, rng), contract.face_margin)
        crop = jpeg_roundtrip(crop[:, ::-1].copy() if rng.random() < 0.5 else crop, int(rng.integers(45, 96)))
        pixels.append(preprocess_image(crop, contract))
        labels.append(float(fake))
    return torch.stack(pixels), torch.tensor(labels)


def train_demo_engine(
    store: EngineStore,
    name: str = "demo",
    budget: DemoBudget | None = None,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> EngineManifest:
    """Train the demo detector, pick its threshold on a validation split, and store + promote the engine."""
    budget = budget or DemoBudget()
    recipe = load_recipe(DEMO_RECIPE)
    factory = scene_factory()
    log(f"generating {budget.train_samples} training and {budget.val_samples} validation crops")
    train = make_samples(factory, recipe.input, budget.train_samples, seed)
    val = make_samples(factory, recipe.input, budget.val_samples, seed + 1)
    torch.manual_seed(seed)
    model = build_detector(recipe)
    result = fit_binary(
        model,
        recipe,
        train,
        val,
        steps=budget.steps,
        eval_every=100,
        seed=seed,
        time_budget_s=budget.time_budget_s,
        log=lambda row: log("  " + "  ".join(f"{k}={v:.4g}" for k, v in row.items())),
    )
    p_val = predict_p_fake(result.model, val[0])
    threshold = youden_threshold(val[1].numpy(), p_val)
    evaluation = {f"val_{k}": v for k, v in binary_metrics(val[1].numpy(), p_val, threshold).items()}
    evaluation["train_steps"] = result.best_step
    log(f"validation at threshold {threshold:.3f}: " + ", ".join(f"{k}={v:.4g}" for k, v in evaluation.items()))
    return build_onnx_engine(result.model, recipe, store, name, threshold=threshold, evaluation=evaluation)


def write_demo_media(out: Path, n_videos: int = 3, n_images: int = 2, seconds: float = 3.0, seed: int = 1000) -> Path:
    """Write real/fake clips and images plus a no-face image into ``out``; returns the ground-truth CSV."""
    from skimage import data

    out.mkdir(parents=True, exist_ok=True)
    factory, rng, rows = scene_factory(), np.random.default_rng(seed), []
    for label in ("real", "fake"):
        for i in range(n_videos):
            photo = factory.forged_photo(factory.random_forgery(rng) if label == "fake" else None)
            start, end, background = factory.random_view(rng), factory.random_view(rng), int(rng.integers(100))
            n = int(seconds * 25)
            frames = (factory.render(photo, start.toward(end, t / max(1, n - 1)), background)[0] for t in range(n))
            path = out / f"{label}_clip_{i + 1}.mp4"
            write_video(path, frames, fps=25.0)
            rows.append((path.name, label))
        for i in range(n_images):
            photo = factory.forged_photo(factory.random_forgery(rng) if label == "fake" else None)
            frame, _ = factory.render(photo, factory.random_view(rng), int(rng.integers(100)))
            path = out / f"{label}_photo_{i + 1}.jpg"
            Image.fromarray(frame).save(path, quality=90)
            rows.append((path.name, label))
    Image.fromarray(data.coffee()).save(out / "no_face_coffee.jpg", quality=90)
    rows.append(("no_face_coffee.jpg", "no_face"))
    truth = out / "ground_truth.csv"
    with open(truth, "w", newline="") as f:
        csv.writer(f).writerows([("file", "label"), *rows])
    return truth
