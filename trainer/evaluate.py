"""Evaluation: run a detector over a dataset split and report the papers' metrics — image level, per class,
tamper masks, and video level by aggregating frames with the daemon's own ``engines.aggregate``.

Accuracy, F1 and DCF depend on how scores become decisions, so each set of them names its rule. The first is the
rule of the recipe's paper (``paper_rule``), so the figures compare with its tables: P(fake) >= 0.5 for seed 000's
binary detector and seed 001; "fake when REAL is not the arg-max class" for multi-class detectors (SD², seed 002
§5.1; the 3-class SIDA head of seed 000 §2.2); the validation-chosen threshold for precision of the few-shot
detector (seed 000 §2.3.2). A threshold tuned on validation (the run's, as an engine ships it) gives a second,
labelled set, ``at_validation_threshold``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from deepsift.engines.aggregate import AggregationRule, ScoredItem, aggregate
from deepsift.engines.recipes import Recipe
from deepsift.trainer.data import ManifestDataset
from deepsift.trainer.logs import progress_of
from deepsift.trainer.metrics import CostModel, MaskCounts, decision_report, multiclass_report, scored_report
from deepsift.trainer.objectives import OBJECTIVES


@dataclass
class DatasetPredictions:
    """Per image P(fake), class probabilities, true class and fake flag; pooled mask counts when masks apply."""

    p_fake: np.ndarray
    class_probs: np.ndarray
    targets: np.ndarray
    fake: np.ndarray
    masks: MaskCounts | None = None
    examples: list[dict[str, np.ndarray]] = field(default_factory=list)


def autocast(amp: str, device: torch.device) -> torch.autocast:
    """fp16 on CUDA, bf16 where asked (or where fp16 is asked on a CPU, which has no fp16 autocast)."""
    if amp == "none":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.float16 if amp == "fp16" and device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def predict_dataset(
    detector: nn.Module,
    recipe: Recipe,
    dataset: ManifestDataset,
    *,
    device: torch.device | None = None,
    batch_size: int | None = None,
    workers: int = 0,
    amp: str | None = None,
    keep_examples: int = 0,
    progress: str | None = None,
) -> DatasetPredictions:
    """Predictions for every item of ``dataset``, in order; masks are counted at threshold 0.5 as they stream.
    With ``progress`` (what is predicted, e.g. ``evaluate test``) a ``progress`` log event every tenth of it."""
    device = device or next(detector.parameters()).device
    predict = OBJECTIVES.get(recipe.train.loss).predict
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size or recipe.train.batch_size, num_workers=workers)
    detector.eval()
    p_fake, probs, masks = [], [], MaskCounts() if recipe.task.masks else None
    examples: list[dict[str, np.ndarray]] = []
    shown = progress_of(progress, len(loader))
    for batch in loader:
        with autocast(amp or recipe.train.amp, device):
            found = predict(detector, batch["pixels"].to(device), recipe)
        p_fake.append(found.p_fake.float().cpu())
        probs.append(found.class_probs.float().cpu())
        if masks is not None and found.mask_probs is not None:
            supervised = batch["has_mask"].bool()
            predicted = (found.mask_probs.float().cpu() >= 0.5).numpy()
            masks.add(batch["mask"][supervised].numpy() >= 0.5, predicted[supervised.numpy()])
            for i in np.nonzero(batch["mask"].flatten(1).amax(1).numpy() > 0)[0][: keep_examples - len(examples)]:
                examples.append(
                    {"mask": batch["mask"][i].numpy(), "predicted": found.mask_probs[i].float().cpu().numpy()}
                )
        shown.step(len(batch["pixels"]))
    return DatasetPredictions(
        p_fake=torch.cat(p_fake).numpy(),
        class_probs=torch.cat(probs).numpy(),
        targets=np.asarray(dataset.targets),
        fake=np.asarray([r.label == "fake" for r in dataset.rows], dtype=int),
        masks=masks,
        examples=examples,
    )


def video_scores(
    dataset: ManifestDataset, p_fake: np.ndarray, rule: AggregationRule, min_track_fraction: float
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(video ids, truth, P(fake)) per video: frames and face tracks reduced exactly as the daemon reduces them."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(dataset.rows):
        if row.video_id:
            groups[row.video_id].append(i)
    ids, truth, scores = [], [], []
    for video, members in sorted(groups.items()):
        frames = [dataset.rows[i].frame_index for i in members]
        distinct = len(set(frames)) > 1 or len(members) == 1
        items = [
            ScoredItem(
                frame_index=frames[k] if distinct else k, p_fake=float(p_fake[i]), track_id=dataset.rows[i].track_id
            )
            for k, i in enumerate(members)
        ]
        ids.append(video)
        truth.append(int(any(dataset.rows[i].label == "fake" for i in members)))
        scores.append(aggregate(items, rule, min_track_fraction).p_fake)
    return ids, np.asarray(truth), np.asarray(scores)


@dataclass(frozen=True)
class DecisionRule:
    """How a detector's outputs become fake/real decisions, stated in words beside the figures it gives."""

    statement: str
    threshold: float | None = None  # None: fake when the real class is not the arg-max of the class probabilities

    def flagged(self, p_fake: np.ndarray, class_probs: np.ndarray, real_index: int) -> np.ndarray:
        if self.threshold is None:
            return np.asarray(class_probs).argmax(axis=1) != real_index
        return np.asarray(p_fake) >= self.threshold

    def fields(self) -> dict[str, object]:
        return {"rule": self.statement, "threshold": self.threshold}


ARGMAX_RULE = DecisionRule(
    "fake when REAL is not the arg-max class (seed 002 §5.1; seed 000 §2.2 decides its 3 classes by arg-max)"
)
VIDEO_OF_ARGMAX_RULE = DecisionRule(
    "aggregated P(fake) >= 0.5 (the arg-max rule needs class probabilities; videos have an aggregated P(fake))", 0.5
)


def paper_rule(recipe: Recipe, validation_threshold: float | None = None) -> DecisionRule:
    """The rule the recipe's paper reports accuracy/F1/DCF at; the few-shot rule is a threshold chosen on validation
    (``validation_threshold``, the run's), 0.5 where none is known."""
    if recipe.task.kind == "multiclass":
        return ARGMAX_RULE
    if recipe.fewshot is not None and validation_threshold is not None:
        return DecisionRule(
            f"P(fake) >= {validation_threshold:.4f}, chosen on validation for precision >= "
            f"{recipe.fewshot.min_precision} (seed 000 §2.3.2)",
            validation_threshold,
        )
    if recipe.fewshot is not None:
        return DecisionRule("P(fake) >= 0.5: no validation-chosen threshold (seed 000 §2.3.2) was given", 0.5)
    return DecisionRule("P(fake) >= 0.5 (seed 000 §2.1, one sigmoid logit; seed 001)", 0.5)


def evaluation_report(
    recipe: Recipe,
    dataset: ManifestDataset,
    predictions: DatasetPredictions,
    *,
    threshold: float | None = None,
    threshold_source: str = "the run's, chosen on the validation split",
    aggregation: str = "mean",
    min_track_fraction: float = 0.1,
    cost: CostModel | None = None,
) -> dict[str, object]:
    """The JSON report: ``image`` (binary fake-vs-real) and ``video`` at the paper's rule, ``classes`` (multi-class),
    ``masks``; with a validation-chosen ``threshold`` (from ``threshold_source``) also ``at_validation_threshold``,
    the decision figures at it."""
    cost = cost or CostModel()
    rule = paper_rule(recipe, threshold)
    real_index = recipe.task.class_names.index(recipe.task.real_class)
    flagged = rule.flagged(predictions.p_fake, predictions.class_probs, real_index)
    report: dict[str, object] = {
        "recipe": recipe.name,
        "recipe_sha256": recipe.sha256,
        "cost_model": vars(cost),
        "decision_rule": rule.statement,
        "image": scored_report(predictions.fake, predictions.p_fake, flagged, cost) | rule.fields(),
    }
    if recipe.task.kind == "multiclass":
        report["classes"] = multiclass_report(predictions.targets, predictions.class_probs, recipe.task.class_names)
    if predictions.masks is not None:
        report["masks"] = predictions.masks.report()
    ids, truth, scores = video_scores(
        dataset, predictions.p_fake, AggregationRule.parse(aggregation), min_track_fraction
    )
    if ids:
        video_rule = VIDEO_OF_ARGMAX_RULE if rule.threshold is None else rule
        report["video"] = {
            "aggregation": aggregation,
            "min_track_fraction": min_track_fraction,
            **scored_report(truth, scores, scores >= (video_rule.threshold or 0.0), cost),
            **video_rule.fields(),
        }
    if threshold is not None and threshold != rule.threshold:
        tuned = DecisionRule(f"P(fake) >= {threshold:.4f}, {threshold_source}", threshold)
        second: dict[str, object] = tuned.fields()
        second["image"] = decision_report(predictions.fake, predictions.p_fake >= threshold, cost)
        if ids:
            second["video"] = decision_report(truth, scores >= threshold, cost)
        report["at_validation_threshold"] = second  # decision figures only: no threshold moves AUC, AP or EER
    return report


def selection_score(report: dict[str, object], select_by: str, predictions: DatasetPredictions) -> float:
    """The recipe's model-selection figure (higher is better): F1/AUC/accuracy/mask IoU, or −log loss."""
    image = report["image"]
    if select_by == "loss":
        from sklearn.metrics import log_loss

        return -float(log_loss(predictions.fake, np.clip(predictions.p_fake, 1e-7, 1 - 1e-7), labels=[0, 1]))
    if select_by == "mask_iou":
        return float(report["masks"]["pixel_iou"])  # type: ignore[index]
    classes = report.get("classes", image)
    key = {"f1": "f1_macro", "accuracy": "accuracy"}.get(select_by)
    if key is not None:
        return float(classes[key])  # type: ignore[index]
    return float(image["roc_auc"])  # type: ignore[index]
