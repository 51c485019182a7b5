"""The drift figures with known values, the windows the options name, and when a comparison is drift, no drift or
too few verdicts (the database side is in tests/integration/test_drift.py)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from deepsift.daemon.cli import build_parser
from deepsift.daemon.drift import (
    DRIFT,
    NO_DRIFT,
    PSI_EPSILON,
    TOO_FEW,
    Thresholds,
    Window,
    WindowSample,
    bin_shares,
    compare,
    ks_test,
    population_stability_index,
    psi_of_shares,
    quantile_edges,
    windows,
)
from deepsift.engines.errors import DeepsiftError

NOW = datetime(2030, 1, 8, 12, 0, tzinfo=UTC)
GRID = np.arange(1000) / 1000  # 0.000 … 0.999: deciles hold exactly 100 values each


def test_psi_of_known_shares():
    assert psi_of_shares(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.0
    assert psi_of_shares(np.array([0.5, 0.5]), np.array([0.25, 0.75])) == pytest.approx(
        0.25 * math.log(2) + 0.25 * math.log(1.5)
    )


def test_an_empty_bin_adds_a_finite_term_through_the_epsilon():
    expected = (0.5 - 1.0) * math.log(0.5 / 1.0) + (0.5 - PSI_EPSILON) * math.log(0.5 / PSI_EPSILON)
    assert psi_of_shares(np.array([1.0, 0.0]), np.array([0.5, 0.5])) == pytest.approx(expected)


def test_psi_bins_at_the_baselines_deciles():
    # Given a uniform baseline and a current window holding only its lower half
    edges = quantile_edges(GRID, 10)
    assert bin_shares(GRID, edges) == pytest.approx(np.full(10, 0.1))
    current = GRID[:500]
    # Then the lower five bins double and the upper five empty
    assert bin_shares(current, edges) == pytest.approx([0.2] * 5 + [0.0] * 5)
    expected = 5 * 0.1 * math.log(2) + 5 * (PSI_EPSILON - 0.1) * math.log(PSI_EPSILON / 0.1)
    assert population_stability_index(GRID, current) == pytest.approx(expected)
    assert population_stability_index(GRID, GRID) == 0.0


def test_tied_baseline_quantiles_merge_their_bins():
    # Given a baseline saturated at 0 for 80 % of its values
    baseline = np.concatenate([np.zeros(800), np.linspace(0.5, 1.0, 200)])
    edges = quantile_edges(baseline, 10)
    # Then the eight tied deciles are one edge, and every value still falls in exactly one bin
    assert edges[0] == 0.0 and np.count_nonzero(edges == 0.0) == 1
    assert bin_shares(baseline, edges).sum() == pytest.approx(1.0)


def test_ks_of_known_samples():
    statistic, p = ks_test(np.array([0.0, 1.0, 2.0]), np.array([10.0, 11.0, 12.0]))
    assert statistic == 1.0 and p == pytest.approx(0.1)  # exact: 2 of the C(6, 3) = 20 orderings
    statistic, p = ks_test(GRID, GRID)
    assert statistic == 0.0 and p == 1.0


def parse(*argv: str):
    return build_parser().parse_args(["drift", *argv])


def test_relative_windows_default_to_a_day_after_the_week_before_it():
    baseline, current = windows(parse(), NOW)
    assert current == Window(NOW - timedelta(hours=24), NOW)
    assert baseline == Window(NOW - timedelta(hours=24 + 168), NOW - timedelta(hours=24))
    baseline, current = windows(parse("--current", "6", "--baseline", "12", "--until", "2030-01-01T06:00"), NOW)
    until = datetime(2030, 1, 1, 6, tzinfo=UTC)  # a time without a zone is UTC
    assert (baseline, current) == (Window(until - timedelta(hours=18), until - timedelta(hours=6)),
                                   Window(until - timedelta(hours=6), until))  # fmt: skip


def test_explicit_windows_need_all_four_edges_and_exclude_the_relative_options():
    edges = ["--baseline-from", "2030-01-01T00:00Z", "--baseline-to", "2030-01-02T00:00Z",
             "--current-from", "2030-01-05T00:00+01:00", "--current-to", "2030-01-06T00:00+01:00"]  # fmt: skip
    baseline, current = windows(parse(*edges), NOW)
    assert baseline.end - baseline.start == timedelta(days=1)
    assert current.start == datetime(2030, 1, 4, 23, tzinfo=UTC)
    with pytest.raises(DeepsiftError, match="all four"):
        windows(parse(*edges[:6]), NOW)
    with pytest.raises(DeepsiftError, match="exclude each other"):
        windows(parse(*edges, "--current", "3"), NOW)
    with pytest.raises(DeepsiftError, match="window is empty"):
        windows(parse(*edges[:2], "--baseline-to", "2029-12-31T00:00Z", *edges[4:]), NOW)


def test_zero_or_negative_hours_and_thresholds_are_usage_errors():
    for argv in (["--current", "0"], ["--baseline", "-3"], ["--max-psi", "nan"], ["--min-verdicts", "0"]):
        with pytest.raises(SystemExit):
            parse(*argv)


def sample(p_fake: np.ndarray, total: int | None = None, no_face: int = 0, errors: int = 0) -> WindowSample:
    total = len(p_fake) + no_face + errors if total is None else total
    return WindowSample(Window(NOW - timedelta(hours=1), NOW), total, no_face, errors, p_fake)


def test_a_shifted_p_fake_is_drift_by_psi_and_ks_and_the_same_distribution_is_not():
    rng = np.random.default_rng(3)
    thresholds = Thresholds(min_verdicts=500)
    baseline = sample(rng.beta(2, 5, 2000))
    same = compare("e", None, baseline, sample(rng.beta(2, 5, 2000)), thresholds)
    shifted = compare("e", None, baseline, sample(rng.beta(5, 2, 2000)), thresholds)
    assert same.exit_code == NO_DRIFT and not any(f.crossed for f in same.figures)
    assert shifted.exit_code == DRIFT
    assert {f.name for f in shifted.figures if f.crossed} == {"psi", "ks"}
    assert shifted.as_json()["drift"][0].startswith("psi ")


def test_a_rate_change_beyond_the_threshold_is_drift_in_either_direction():
    values = np.linspace(0.1, 0.9, 900)
    thresholds = Thresholds(max_rate_change=0.05, min_verdicts=500)
    more_errors = compare("e", 1, sample(values, errors=10), sample(values, errors=100), thresholds)
    fewer_no_face = compare("e", 1, sample(values, no_face=100), sample(values, no_face=0), thresholds)
    assert [f.name for f in more_errors.figures if f.crossed] == ["error_rate"]
    assert [f.name for f in fewer_no_face.figures if f.crossed] == ["no_face_rate"]


def test_too_few_verdicts_is_its_own_outcome_never_drift():
    rng = np.random.default_rng(4)
    thresholds = Thresholds(min_verdicts=500)
    # A current window of 20 verdicts, all shifted and half of them errors: nothing is compared
    few = compare("e", None, sample(rng.beta(2, 5, 2000)), sample(rng.beta(5, 2, 10), errors=10), thresholds)
    assert few.exit_code == TOO_FEW and few.figures == ()
    assert few.too_few == ["current window has 20 verdicts"]


def test_an_engine_that_only_errs_is_drift_although_it_has_too_few_ok_verdicts_for_psi():
    rng = np.random.default_rng(5)
    thresholds = Thresholds(min_verdicts=500)
    broken = compare("e", None, sample(rng.beta(2, 5, 2000)), sample(np.empty(0), errors=800), thresholds)
    assert broken.exit_code == DRIFT and [f.name for f in broken.figures] == ["no_face_rate", "error_rate"]
    quiet = compare("e", None, sample(rng.beta(2, 5, 2000)), sample(rng.beta(2, 5, 100), no_face=900), thresholds)
    assert [f.name for f in quiet.figures if f.crossed] == ["no_face_rate"]
    healthy = compare("e", None, sample(rng.beta(2, 5, 600)), sample(rng.beta(2, 5, 100), total=600), thresholds)
    assert healthy.exit_code == TOO_FEW and healthy.too_few == ["current window has 100 ok verdicts"]
