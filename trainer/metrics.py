"""Detection metrics, from scikit-learn wherever it has them.

Binary scores are P(fake) with label 1 = fake. EER is where the false-accept and false-reject rates cross
on the ROC curve. DCF (seed 001 Table III) is the detection cost C_miss·P_miss·P_fake + C_fa·P_fa·(1 − P_fake)
of the decisions a stated rule makes (``trainer.evaluate.paper_rule``, or a threshold); seed 001 does not state
its parameters, and with C_miss = C_fa = 1 and P_fake = 0.5 (the defaults here) its DCF of 0.0876 sits next to its
EER of 8.73%, as this definition implies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn import metrics


@dataclass(frozen=True)
class CostModel:
    """Costs and prior of the detection cost function."""

    c_miss: float = 1.0
    c_fa: float = 1.0
    p_fake: float = 0.5


def _two_classes(y: np.ndarray) -> bool:
    return len(np.unique(y)) == 2


def ranking_metrics(y_true: np.ndarray, p_fake: np.ndarray) -> dict[str, float]:
    """ROC-AUC and AP: figures of the scores alone, at no decision rule (NaN with one class)."""
    y_true = np.asarray(y_true).astype(int)
    both_classes = _two_classes(y_true)
    return {
        "roc_auc": float(metrics.roc_auc_score(y_true, p_fake)) if both_classes else float("nan"),
        "average_precision": float(metrics.average_precision_score(y_true, p_fake)) if both_classes else float("nan"),
    }


def decision_metrics(y_true: np.ndarray, flagged: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy and macro F1 of fake/real decisions (``flagged``: called fake)."""
    y_true, y_pred = np.asarray(y_true).astype(int), np.asarray(flagged).astype(int)
    return {
        "accuracy": float(metrics.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(metrics.balanced_accuracy_score(y_true, y_pred)),
        "f1_macro": float(metrics.f1_score(y_true, y_pred, average="macro")),
    }


def binary_metrics(y_true: np.ndarray, p_fake: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """ROC-AUC, AP, accuracy, balanced accuracy and macro F1 at ``threshold`` (label 1 = fake)."""
    return ranking_metrics(y_true, p_fake) | decision_metrics(y_true, np.asarray(p_fake) >= threshold)


def youden_threshold(y_true: np.ndarray, p_fake: np.ndarray) -> float:
    """The threshold that maximises TPR − FPR on a validation split."""
    fpr, tpr, thresholds = metrics.roc_curve(np.asarray(y_true).astype(int), p_fake)
    best = int(np.argmax(tpr - fpr))
    return float(np.clip(thresholds[best], 0.0, 1.0))


def equal_error_rate(y_true: np.ndarray, p_fake: np.ndarray) -> tuple[float, float]:
    """(EER, threshold): the error rate where FPR equals FNR, linearly interpolated between ROC points."""
    fpr, tpr, thresholds = metrics.roc_curve(np.asarray(y_true).astype(int), p_fake)
    fnr = 1 - tpr
    diff = fpr - fnr  # rises from −1 to +1 along the curve
    i = int(np.argmax(diff >= 0))
    if i == 0 or diff[i] == 0:
        return float((fpr[i] + fnr[i]) / 2), float(np.clip(thresholds[i], 0, 1))
    t = -diff[i - 1] / (diff[i] - diff[i - 1])
    eer = fpr[i - 1] + t * (fpr[i] - fpr[i - 1])
    return float(eer), float(np.clip(thresholds[i - 1] + t * (thresholds[i] - thresholds[i - 1]), 0, 1))


def detection_cost(y_true: np.ndarray, p_fake: np.ndarray, threshold: float, cost: CostModel = CostModel()) -> float:
    """DCF at ``threshold``: C_miss·P_miss·P_fake + C_fa·P_fa·(1 − P_fake); a miss is a fake scored below it."""
    return decision_cost(y_true, np.asarray(p_fake) >= threshold, cost)


def decision_cost(y_true: np.ndarray, flagged: np.ndarray, cost: CostModel = CostModel()) -> float:
    """DCF of fake/real decisions: a miss is a fake not flagged, a false alarm a real one flagged."""
    y, flagged = np.asarray(y_true).astype(int), np.asarray(flagged, dtype=bool)
    p_miss = float(np.mean(~flagged[y == 1])) if (y == 1).any() else 0.0
    p_fa = float(np.mean(flagged[y == 0])) if (y == 0).any() else 0.0
    return cost.c_miss * p_miss * cost.p_fake + cost.c_fa * p_fa * (1 - cost.p_fake)


def minimum_detection_cost(y_true: np.ndarray, p_fake: np.ndarray, cost: CostModel = CostModel()) -> float:
    """The lowest DCF over all thresholds (what a perfectly calibrated threshold would reach)."""
    fpr, tpr, _ = metrics.roc_curve(np.asarray(y_true).astype(int), p_fake)
    return float(np.min(cost.c_miss * (1 - tpr) * cost.p_fake + cost.c_fa * fpr * (1 - cost.p_fake)))


def threshold_for_precision(y_true: np.ndarray, p_fake: np.ndarray, min_precision: float) -> float | None:
    """The lowest threshold whose precision on fakes is at least ``min_precision`` (most recall under the
    constraint), or None when no threshold reaches it."""
    precision, _, thresholds = metrics.precision_recall_curve(np.asarray(y_true).astype(int), p_fake)
    ok = np.nonzero(precision[:-1] >= min_precision)[0]
    return float(thresholds[ok[0]]) if len(ok) else None


def decision_report(y_true: np.ndarray, flagged: np.ndarray, cost: CostModel = CostModel()) -> dict[str, object]:
    """The papers' figures of one set of fake/real decisions: accuracy, balanced accuracy, macro and fake-class
    precision/recall/F1, DCF and the confusion matrix (rows truth real/fake, columns decided real/fake)."""
    y, y_pred = np.asarray(y_true).astype(int), np.asarray(flagged).astype(int)
    found: dict[str, object] = dict(decision_metrics(y, y_pred))
    precision, recall, f1, _ = metrics.precision_recall_fscore_support(y, y_pred, average="macro", zero_division=0)
    found |= {"precision_macro": float(precision), "recall_macro": float(recall), "f1_macro": float(f1)}
    found["precision_fake"] = float(metrics.precision_score(y, y_pred, zero_division=0))
    found["recall_fake"] = float(metrics.recall_score(y, y_pred, zero_division=0))
    found["dcf"] = decision_cost(y, y_pred, cost)
    found["confusion_matrix"] = metrics.confusion_matrix(y, y_pred, labels=[0, 1]).tolist()
    found["n"] = len(y)
    return found


def detection_report(
    y_true: np.ndarray, p_fake: np.ndarray, threshold: float, cost: CostModel = CostModel()
) -> dict[str, object]:
    """Every binary figure of the papers at one operating threshold, plus its confusion matrix."""
    return scored_report(y_true, p_fake, np.asarray(p_fake) >= threshold, cost) | {"threshold": threshold}


def scored_report(
    y_true: np.ndarray, p_fake: np.ndarray, flagged: np.ndarray, cost: CostModel = CostModel()
) -> dict[str, object]:
    """The score figures (ROC-AUC, AP, EER, minimum DCF) with the figures of the decisions ``flagged``."""
    y = np.asarray(y_true).astype(int)
    found: dict[str, object] = dict(ranking_metrics(y, p_fake))
    if _two_classes(y):
        found["eer"], found["eer_threshold"] = equal_error_rate(y, p_fake)
        found["min_dcf"] = minimum_detection_cost(y, p_fake, cost)
    return found | decision_report(y, flagged, cost)


def multiclass_report(y_true: np.ndarray, class_probs: np.ndarray, class_names: Sequence[str]) -> dict[str, object]:
    """Accuracy, balanced accuracy, macro P/R/F1, one-vs-rest AUC, per-class figures and the confusion matrix."""
    y = np.asarray(y_true).astype(int)
    labels = list(range(len(class_names)))
    y_pred = np.asarray(class_probs).argmax(axis=1)
    precision, recall, f1, _ = metrics.precision_recall_fscore_support(
        y, y_pred, labels=labels, average="macro", zero_division=0
    )
    per_class = metrics.classification_report(
        y, y_pred, labels=labels, target_names=list(class_names), output_dict=True, zero_division=0
    )
    found: dict[str, object] = {
        "accuracy": float(metrics.accuracy_score(y, y_pred)),
        "balanced_accuracy": float(metrics.balanced_accuracy_score(y, y_pred)),
        "precision_macro": float(precision),
        "recall_macro": float(recall),
        "f1_macro": float(f1),
        "per_class": {name: per_class[name] for name in class_names},
        "confusion_matrix": metrics.confusion_matrix(y, y_pred, labels=labels).tolist(),
    }
    if len(np.unique(y)) == len(class_names):
        found["roc_auc_ovr_macro"] = float(metrics.roc_auc_score(y, class_probs, multi_class="ovr", labels=labels))
    return found


@dataclass
class MaskCounts:
    """Pixel confusion counts, pooled, plus per-image IoU/Dice for images with a non-empty true mask.

    Counting as batches stream keeps memory flat on large validation sets; the figures equal scikit-learn's
    jaccard/f1/precision/recall on the pooled pixels (checked in the tests).
    """

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __post_init__(self) -> None:
        self.image_iou: list[float] = []
        self.image_dice: list[float] = []

    def add(self, truth: np.ndarray, predicted: np.ndarray) -> None:
        """Add images (N×H×W booleans)."""
        for t, p in zip(np.asarray(truth, bool), np.asarray(predicted, bool), strict=True):
            tp, fp, fn = int((t & p).sum()), int((~t & p).sum()), int((t & ~p).sum())
            self.tp, self.fp, self.fn, self.tn = (
                self.tp + tp,
                self.fp + fp,
                self.fn + fn,
                self.tn + int(t.size) - tp - fp - fn,
            )
            if t.any():
                self.image_iou.append(tp / (tp + fp + fn))
                self.image_dice.append(2 * tp / (2 * tp + fp + fn))

    def report(self) -> dict[str, float]:
        def ratio(a: int, b: int) -> float:
            return a / b if b else float("nan")

        return {
            "pixel_iou": ratio(self.tp, self.tp + self.fp + self.fn),
            "pixel_dice": ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn),
            "pixel_precision": ratio(self.tp, self.tp + self.fp),
            "pixel_recall": ratio(self.tp, self.tp + self.fn),
            "pixel_accuracy": ratio(self.tp + self.tn, self.tp + self.tn + self.fp + self.fn),
            "mean_image_iou": float(np.mean(self.image_iou)) if self.image_iou else float("nan"),
            "mean_image_dice": float(np.mean(self.image_dice)) if self.image_dice else float("nan"),
            "masked_images": len(self.image_iou),
        }
