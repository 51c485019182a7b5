"""``trainer evaluate``: a trained detector on one split → ``report.json`` and PNG plots in one folder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deepsift.engines.errors import DeepsiftError
from deepsift.engines.models import build_detector
from deepsift.engines.recipes import Recipe, load_recipe
from deepsift.trainer.data import dataset_for
from deepsift.trainer.evaluate import evaluation_report, predict_dataset
from deepsift.trainer.metrics import CostModel
from deepsift.trainer.plots import detection_plots, training_curves
from deepsift.trainer.runs import RunFolder


@dataclass(frozen=True)
class EvaluateOptions:
    data: Path
    out: Path
    split: str = "test"
    run: Path | None = None
    recipe: str | None = None
    checkpoint: Path | None = None
    threshold: float | None = None
    aggregation: str = "mean"
    min_track_fraction: float = 0.1
    c_miss: float = 1.0
    c_fa: float = 1.0
    p_fake: float = 0.5
    device: str | None = None


def _load(options: EvaluateOptions) -> tuple[Recipe, Path, float | None]:
    """Recipe, checkpoint and the run's own threshold (from its summary) for a run folder or recipe+checkpoint."""
    if options.run is not None:
        run = RunFolder(options.run)
        recipe = run.read_recipe()
        threshold = run.read_summary().get("threshold") if run.is_finished() else None
        return recipe, run.best, threshold
    if options.recipe is None or options.checkpoint is None:
        raise DeepsiftError("evaluate needs --run, or --recipe with --checkpoint")
    return load_recipe(options.recipe), options.checkpoint, None


def evaluate_run(options: EvaluateOptions) -> dict[str, object]:
    recipe, checkpoint, run_threshold = _load(options)
    device = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    detector = build_detector(recipe)
    detector.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    detector.to(device)
    dataset = dataset_for(options.data, options.split, recipe)  # type: ignore[arg-type]
    predictions = predict_dataset(detector, recipe, dataset, device=device, progress=f"evaluate {options.split}")
    given = options.threshold is not None
    threshold = options.threshold if given else run_threshold
    source = "given with --threshold" if given else "the run's, chosen on the validation split"
    report = evaluation_report(
        recipe, dataset, predictions, threshold=threshold, threshold_source=source, aggregation=options.aggregation,
        min_track_fraction=options.min_track_fraction, cost=CostModel(options.c_miss, options.c_fa, options.p_fake),
    )  # fmt: skip
    threshold = report["image"]["threshold"] or threshold or 0.5  # plots mark the paper rule's, as its confusion
    report |= {"split": options.split, "data": str(options.data), "checkpoint": str(checkpoint)}
    options.out.mkdir(parents=True, exist_ok=True)
    confusion = report["classes"]["confusion_matrix"] if "classes" in report else report["image"]["confusion_matrix"]
    names = recipe.task.class_names if "classes" in report else ("real", "fake")
    targets = predictions.targets if "classes" in report else predictions.fake
    title = f"{(options.run or checkpoint).name} · {options.split} split · n={len(dataset)}"
    plots = detection_plots(options.out, predictions.fake, predictions.p_fake, confusion, names, np.asarray(targets),
                            title=title, threshold=threshold)  # fmt: skip
    run = RunFolder(options.run) if options.run is not None else None
    if run is not None and run.history_file.exists():
        curve = training_curves(options.out, run.read_history(), title=f"{options.run.name} · training")
        plots += [curve] if curve else []
    report["plots"] = [p.name for p in plots]
    (options.out / "report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    return report
