"""Calibration of the fake logit (temperature, isotonic), its figures (ECE, NLL, Brier) and the FPR threshold."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression
from structlog.testing import capture_logs

from deepsift.engines.manifest import Calibration
from deepsift.trainer.calibrate import (
    CROSS_FITTED,
    IN_SAMPLE,
    brier_score,
    calibrate,
    expected_calibration_error,
    fit_isotonic,
    fit_temperature,
    held_out_p_fake,
    negative_log_likelihood,
    threshold_for_fpr,
)


def overconfident_scores(n: int, scale: float, shift: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from a calibrated true logit, and the logit a miscalibrated model reports: true × scale + shift."""
    rng = np.random.default_rng(seed)
    true_logit = rng.normal(0.0, 2.0, n)
    labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-true_logit))).astype(int)
    return true_logit * scale + shift, labels


# --- figures ----------------------------------------------------------------------------------------------------


def test_ece_weighs_each_bins_gap_by_its_share_of_items() -> None:
    # Given two items at 0.1 (one fake) and two at 0.9 (both fake): bin gaps 0.4 and 0.1, each half the items
    p, y = np.array([0.1, 0.1, 0.9, 0.9]), np.array([0, 1, 1, 1])
    assert expected_calibration_error(p, y) == pytest.approx(0.5 * 0.4 + 0.5 * 0.1)

    # And P(fake) of exactly 1.0 lands in the last bin; a calibrated score has no error
    assert expected_calibration_error(np.array([1.0, 1.0]), np.array([1, 1])) == 0.0
    assert expected_calibration_error(np.full(4, 0.5), np.array([0, 1, 0, 1])) == 0.0


def test_nll_and_brier_of_a_known_prediction() -> None:
    p, y = np.array([0.8, 0.25]), np.array([1, 0])
    assert negative_log_likelihood(p, y) == pytest.approx(-(np.log(0.8) + np.log(0.75)) / 2)
    assert brier_score(p, y) == pytest.approx((0.2**2 + 0.25**2) / 2)
    assert np.isfinite(negative_log_likelihood(np.array([0.0]), np.array([1])))  # clipped, not inf


# --- fitting ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["temperature", "isotonic"])
def test_calibration_fitted_on_one_half_lowers_ece_on_the_other(method: str) -> None:
    # Given overconfident, shifted logits split into a fitting half and a held-out half
    logits, labels = overconfident_scores(8000, scale=4.0, shift=1.0)
    fit_z, fit_y, held_z, held_y = logits[:4000], labels[:4000], logits[4000:], labels[4000:]

    # When calibrated on the first half
    result = calibrate(fit_z, fit_y, method, target_fpr=0.05)

    # Then on the held-out half the calibrated P(fake) has well under half the ECE and a lower NLL
    raw, calibrated = Calibration().p_fake_array(held_z), result.calibration.p_fake_array(held_z)
    assert expected_calibration_error(raw, held_y) > 0.1
    assert expected_calibration_error(calibrated, held_y) < 0.5 * expected_calibration_error(raw, held_y)
    assert negative_log_likelihood(calibrated, held_y) < negative_log_likelihood(raw, held_y)
    assert result.calibration.method == method
    assert result.report["ece_after"] < result.report["ece_before"]
    assert result.report["nll_after"] < result.report["nll_before"]


def test_temperature_recovers_the_overconfidence_scale() -> None:
    # Given logits four times the calibrated ones, when a temperature is fitted, then it is about 4
    logits, labels = overconfident_scores(4000, scale=4.0, shift=0.0)
    assert fit_temperature(logits, labels).temperature == pytest.approx(4.0, rel=0.1)

    # And calibrated logits keep a temperature near 1
    logits, labels = overconfident_scores(4000, scale=1.0, shift=0.0, seed=1)
    assert fit_temperature(logits, labels).temperature == pytest.approx(1.0, rel=0.1)


def test_isotonic_knots_are_few_monotone_and_accepted_by_the_manifest() -> None:
    # Given scores that make scikit-learn's isotonic fit more knots than allowed
    logits, labels = overconfident_scores(20000, scale=4.0, shift=1.0)
    full = IsotonicRegression(out_of_bounds="clip").fit(logits, labels)
    assert len(full.X_thresholds_) > 20

    # When fitted with at most 20 knots
    calibration = fit_isotonic(logits, labels, max_knots=20)

    # Then it keeps 20 knots spanning the same logits, ascending in both, a valid Calibration after a round trip
    x, p = np.array(calibration.logits), np.array(calibration.probabilities)
    assert len(x) == 20 and (x[0], x[-1]) == (full.X_thresholds_[0], full.X_thresholds_[-1])
    assert np.all(np.diff(x) > 0) and np.all(np.diff(p) >= 0) and p[0] >= 0 and p[-1] <= 1
    assert Calibration.model_validate_json(calibration.model_dump_json()) == calibration
    # and stays close to the uncompacted fit everywhere, including beyond the fitted range
    grid = np.linspace(logits.min() - 5, logits.max() + 5, 2001)
    assert np.abs(calibration.p_fake_array(grid) - full.predict(grid)).max() < 0.05


def test_isotonic_with_few_knots_is_stored_exactly() -> None:
    logits, labels = overconfident_scores(500, scale=4.0, shift=0.0)
    full = IsotonicRegression(out_of_bounds="clip").fit(logits, labels)
    calibration = fit_isotonic(logits, labels)
    assert len(calibration.logits) == len(full.X_thresholds_) <= 200
    np.testing.assert_allclose(calibration.p_fake_array(logits), full.predict(logits), atol=1e-12)


# --- threshold --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [0.0, 0.01, 0.05, 0.2])
def test_threshold_is_the_smallest_meeting_the_target_fpr(target: float) -> None:
    # Given calibrated P(fake) of 4000 validation items
    logits, labels = overconfident_scores(4000, scale=1.0, shift=0.0)
    p = Calibration().p_fake_array(logits)

    # When the threshold for the target FPR is chosen
    point = threshold_for_fpr(p, labels, target)

    # Then it meets the target on these items, any lower threshold does not, and the rates are as stated
    flagged = p >= point.threshold
    assert point.fpr == flagged[labels == 0].mean() <= target
    assert point.tpr == flagged[labels == 1].mean()
    assert (p >= np.nextafter(point.threshold, -np.inf))[labels == 0].mean() > target
    assert (point.n_real, point.n_fake) == ((labels == 0).sum(), (labels == 1).sum())


def test_tied_real_scores_are_passed_together() -> None:
    # Given 10 reals, two tied at the top score: a 10% FPR would allow one of them, but a tie cannot be split
    p = np.array([0.9, 0.9, *np.linspace(0.1, 0.5, 8), 0.95, 0.92])
    y = np.array([0] * 10 + [1, 1])

    point = threshold_for_fpr(p, y, 0.1)

    # Then the threshold sits just above the tie, and the FPR reached is 0, below the target
    assert point.threshold == np.nextafter(0.9, 1.0) and point.fpr == 0.0 and point.tpr == 1.0


def test_with_few_reals_the_threshold_passes_every_real() -> None:
    # Given 5 reals, a 5% target allows no false positive at all
    p, y = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.5, 0.7]), np.array([0, 0, 0, 0, 0, 1, 1])
    point = threshold_for_fpr(p, y, 0.05)
    assert point.threshold == np.nextafter(0.6, 1.0) and point.fpr == 0.0 and point.tpr == 0.5

    # And a target of 1 flags everything
    assert threshold_for_fpr(p, y, 1.0).threshold == 0.0


def test_calibrate_reports_the_threshold_on_calibrated_probabilities() -> None:
    logits, labels = overconfident_scores(2000, scale=4.0, shift=1.0)
    result = calibrate(logits, labels, "isotonic", target_fpr=0.05)
    p = result.calibration.p_fake_array(logits)
    assert result.threshold == result.report["threshold"] == threshold_for_fpr(p, labels, 0.05).threshold
    assert result.report["fpr"] <= 0.05 and result.report["n"] == 2000
    assert 0 < result.report["knots"] <= 200 and 0.0 <= result.threshold <= 1.0


# --- degenerate input -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["temperature", "isotonic", "none"])
@pytest.mark.parametrize(
    ("logits", "labels", "message"),
    [
        ([], [], "empty"),
        ([0.5, 1.0, 2.0], [1, 1, 1], "both real and fake.*all 3 are fake"),
        ([0.5, 1.0], [0, 0], "all 2 are real"),
        ([0.5, 1.0], [0, 1, 1], "2 logits but 3 labels"),
        ([0.5, float("nan")], [0, 1], "NaN"),
        ([0.5, 1.0], [0, 2], "0 \\(real\\) or 1 \\(fake\\)"),
    ],
)
def test_degenerate_validation_sets_are_refused(method: str, logits: list, labels: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        calibrate(np.array(logits), np.array(labels), method, target_fpr=0.05)


def test_other_refusals_say_why() -> None:
    with pytest.raises(ValueError, match="two distinct logits"):
        fit_isotonic(np.array([1.0, 1.0, 1.0]), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="unknown calibration method"):
        calibrate(np.array([0.0, 1.0]), np.array([0, 1]), "platt", 0.05)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not logits"):
        threshold_for_fpr(np.array([-2.0, 3.0]), np.array([0, 1]), 0.05)
    with pytest.raises(ValueError, match="target FPR"):
        threshold_for_fpr(np.array([0.2, 0.8]), np.array([0, 1]), 1.5)
    with pytest.raises(ValueError, match=r"reals score 1\.0"):
        threshold_for_fpr(np.array([1.0, 1.0, 0.5]), np.array([0, 1, 1]), 0.0)


# --- held-out figures and the FPR resolution ---------------------------------------------------------------------


def test_isotonic_ece_is_reported_on_items_the_calibration_was_not_fitted_on() -> None:
    # Given noisy validation logits (isotonic fits its own items perfectly in the ECE sense)
    logits, labels = overconfident_scores(600, scale=3.0, shift=0.5, seed=3)
    # When calibrated
    report = calibrate(logits, labels, "isotonic", target_fpr=0.05).report
    # Then the in-sample ECE is (near) zero, but the figure reported is the cross-fitted one, and says so
    assert report["ece_after_in_sample"] < 1e-9
    assert report["ece_after"] > 0.01
    assert report["scored_on"] == CROSS_FITTED
    held = held_out_p_fake(logits, labels, "isotonic")
    assert report["ece_after"] == pytest.approx(expected_calibration_error(held, labels))
    assert report["nll_after"] == pytest.approx(negative_log_likelihood(held, labels))


def test_cross_fitting_scores_each_item_by_a_calibration_fitted_on_the_other_fold_only() -> None:
    # Given fakes and reals whose logits are disjoint (a real at 5.0 would be called fake if it fitted itself)
    logits = np.array([-3.0, -2.0, -1.0, 5.0, 1.0, 2.0, 3.0, 4.0])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    held = held_out_p_fake(logits, labels, "isotonic")
    fitted_on_all = fit_isotonic(logits, labels).p_fake_array(logits)
    # Then the held-out P(fake) differs from the in-sample one, and the split is seeded (the same twice)
    assert held is not None and not np.allclose(held, fitted_on_all)
    np.testing.assert_array_equal(held, held_out_p_fake(logits, labels, "isotonic"))


def test_too_few_items_to_hold_out_fall_back_to_in_sample_figures_and_say_so() -> None:
    report = calibrate(np.array([-2.0, 1.0, 2.0]), np.array([0, 1, 1]), "temperature", target_fpr=0.0).report
    assert report["scored_on"] == IN_SAMPLE and report["ece_after"] == report["ece_after_in_sample"]


def test_a_target_fpr_below_what_the_reals_can_measure_is_warned_about() -> None:
    # Given 100 reals: an FPR below 0.01 cannot be measured on them
    logits, labels = np.linspace(-3, 3, 200), np.repeat([0, 1], 100)
    with capture_logs() as logs:
        coarse = calibrate(logits, labels, "temperature", target_fpr=0.001).report
        fine = calibrate(logits, labels, "temperature", target_fpr=0.05).report
    warned = [e for e in logs if e["event"] == "target_fpr_below_resolution"]
    assert coarse["fpr_resolution"] == fine["fpr_resolution"] == pytest.approx(0.01)
    assert len(warned) == 1 and warned[0]["log_level"] == "warning"
    assert warned[0]["n_real"] == 100 and warned[0]["target_fpr"] == 0.001
