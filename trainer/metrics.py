"""Binary detection metrics, from scikit-learn wherever it has them."""

from __future__ import annotations

import numpy as np
from sklearn import metrics


def binary_metrics(y_true: np.ndarray, p_fake: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """ROC-AUC, AP, accuracy, balanced accuracy and macro F1 at ``threshold`` (label 1 = fake)."""
    y_true = np.asarray(y_true).astype(int)
    y_pred = (np.asarray(p_fake) >= threshold).astype(int)
    both_classes = len(np.unique(y_true)) == 2
    return {
        "roc_auc": float(metrics.roc_auc_score(y_true, p_fake)) if both_classes else float("nan"),
        "average_precision": float(metrics.average_precision_score(y_true, p_fake)) if both_classes else float("nan"),
        "accuracy": float(metrics.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(metrics.balanced_accuracy_score(y_true, y_pred)),
        "f1_macro": float(metrics.f1_score(y_true, y_pred, average="macro")),
    }


def youden_threshold(y_true: np.ndarray, p_fake: np.ndarray) -> float:
    """The threshold that maximises TPR − FPR on a validation split."""
    fpr, tpr, thresholds = metrics.roc_curve(np.asarray(y_true).astype(int), p_fake)
    best = int(np.argmax(tpr - fpr))
    return float(np.clip(thresholds[best], 0.0, 1.0))
