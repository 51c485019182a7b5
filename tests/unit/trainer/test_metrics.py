"""Evaluation metrics: agreement with scikit-learn, and EER/DCF on cases small enough to check by hand."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from deepsift.trainer.metrics import (
    CostModel,
    MaskCounts,
    detection_cost,
    detection_report,
    equal_error_rate,
    minimum_detection_cost,
    multiclass_report,
    threshold_for_precision,
)


@pytest.fixture
def scored() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    return y, np.clip(0.5 * y + rng.normal(0.25, 0.2, 400), 0, 1)


def test_the_detection_report_agrees_with_scikit_learn(scored: tuple[np.ndarray, np.ndarray]) -> None:
    # Given noisy scores, when the report is computed at threshold 0.6
    y, p = scored
    report = detection_report(y, p, 0.6)

    # Then every figure scikit-learn has is scikit-learn's
    y_pred = (p >= 0.6).astype(int)
    assert report["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert report["average_precision"] == pytest.approx(skm.average_precision_score(y, p))
    assert report["accuracy"] == pytest.approx(skm.accuracy_score(y, y_pred))
    assert report["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, y_pred))
    assert report["precision_macro"] == pytest.approx(skm.precision_score(y, y_pred, average="macro"))
    assert report["recall_macro"] == pytest.approx(skm.recall_score(y, y_pred, average="macro"))
    assert report["f1_macro"] == pytest.approx(skm.f1_score(y, y_pred, average="macro"))
    assert report["confusion_matrix"] == skm.confusion_matrix(y, y_pred).tolist()


@pytest.mark.parametrize(
    ("y", "p", "expected"),
    [
        ([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 0.0),  # separable: no error at the crossing
        ([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], 0.5),  # one swap of two per class: FPR = FNR = 1/2
        ([0, 0, 0, 0, 1, 1, 1, 1], [0.1, 0.2, 0.3, 0.7, 0.6, 0.8, 0.9, 0.95], 0.25),  # one swap of four
        ([0, 1], [0.9, 0.1], 1.0),  # inverted
    ],
)
def test_the_equal_error_rate_on_hand_checkable_cases(y: list[int], p: list[float], expected: float) -> None:
    eer, _ = equal_error_rate(np.array(y), np.array(p))
    assert eer == pytest.approx(expected)


def test_at_the_eer_threshold_false_accepts_and_misses_balance() -> None:
    # Given a case whose ROC has a point with FPR = FNR = 0.25
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.6, 0.8, 0.9, 0.95])
    eer, threshold = equal_error_rate(y, p)

    # Then at its threshold a quarter of the reals are flagged and a quarter of the fakes missed
    flagged = p >= threshold
    assert np.mean(flagged[y == 0]) == pytest.approx(eer) and np.mean(~flagged[y == 1]) == pytest.approx(eer)


def test_the_detection_cost_by_hand() -> None:
    # Given 2 reals and 2 fakes where one of each is on the wrong side of 0.5
    y, p = np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.4, 0.9])

    # Then P_miss = P_fa = 1/2: DCF = 0.5·0.5 + 0.5·0.5 with unit costs and an even prior ...
    assert detection_cost(y, p, 0.5) == pytest.approx(0.5)
    # ... and 10·0.5·0.1 + 1·0.5·0.9 = 0.95 when a miss costs 10 and fakes are 10% of traffic
    assert detection_cost(y, p, 0.5, CostModel(c_miss=10, c_fa=1, p_fake=0.1)) == pytest.approx(0.95)
    # A threshold above every score misses every fake and flags nothing
    assert detection_cost(y, p, 0.99) == pytest.approx(0.5)


def test_the_minimum_dcf_is_the_best_over_thresholds(scored: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = scored
    best = min(detection_cost(y, p, t) for t in np.unique(p))
    assert minimum_detection_cost(y, p) == pytest.approx(best)


def test_the_precision_threshold_meets_the_constraint_with_the_most_recall(
    scored: tuple[np.ndarray, np.ndarray],
) -> None:
    y, p = scored
    threshold = threshold_for_precision(y, p, 0.95)
    assert threshold is not None
    assert skm.precision_score(y, p >= threshold) >= 0.95
    lower = p[p < threshold].max()  # the next lower threshold breaks the constraint
    assert skm.precision_score(y, p >= lower) < 0.95
    assert threshold_for_precision(np.array([0, 1]), np.array([0.9, 0.1]), 0.99) is None


def test_the_multiclass_report_agrees_with_scikit_learn() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    probs = rng.dirichlet([1, 1, 1], 300) + np.eye(3)[y] * 0.5
    probs /= probs.sum(1, keepdims=True)
    report = multiclass_report(y, probs, ("real", "synthetic", "tampered"))
    y_pred = probs.argmax(1)
    assert report["accuracy"] == pytest.approx(skm.accuracy_score(y, y_pred))
    assert report["f1_macro"] == pytest.approx(skm.f1_score(y, y_pred, average="macro"))
    assert report["roc_auc_ovr_macro"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr"))
    assert report["per_class"]["tampered"]["recall"] == pytest.approx(skm.recall_score(y == 2, y_pred == 2))
    assert report["confusion_matrix"] == skm.confusion_matrix(y, y_pred).tolist()


def test_pixel_metrics_agree_with_scikit_learn_on_pooled_pixels() -> None:
    # Given true and predicted masks for 5 images, one with an empty true mask, added in two batches
    rng = np.random.default_rng(2)
    truth = rng.random((5, 16, 16)) > 0.7
    truth[4] = False
    predicted = truth ^ (rng.random((5, 16, 16)) > 0.85)
    counts = MaskCounts()
    counts.add(truth[:2], predicted[:2])
    counts.add(truth[2:], predicted[2:])
    report = counts.report()

    # Then pooled IoU/Dice/precision/recall are scikit-learn's on the flattened pixels
    t, p = truth.ravel(), predicted.ravel()
    assert report["pixel_iou"] == pytest.approx(skm.jaccard_score(t, p))
    assert report["pixel_dice"] == pytest.approx(skm.f1_score(t, p))
    assert report["pixel_precision"] == pytest.approx(skm.precision_score(t, p))
    assert report["pixel_recall"] == pytest.approx(skm.recall_score(t, p))
    assert report["pixel_accuracy"] == pytest.approx(skm.accuracy_score(t, p))
    # and the per-image mean covers the 4 images with something to find
    per_image = [skm.jaccard_score(truth[i].ravel(), predicted[i].ravel()) for i in range(4)]
    assert report["masked_images"] == 4 and report["mean_image_iou"] == pytest.approx(np.mean(per_image))
