"""The uncertain band around the operating threshold: the smallest fake-side and largest real-side cuts that reach
the target precision on validation, with its edge cases (unreachable or empty sides, ties)."""

from __future__ import annotations

import numpy as np
import pytest

from deepsift.trainer.band import choose_band

# ten validation items, a real at 0.5 and 0.7 and a fake at 0.4 inside the overlap
SCORES = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
LABELS = np.array([0, 0, 0, 1, 0, 1, 0, 1, 1, 1])


def test_separated_classes_need_no_band() -> None:
    band = choose_band(np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]), np.array([0, 0, 0, 1, 1, 1]), 0.5, 0.99)
    assert (band.low, band.high, band.share_uncertain) == (0.5, 0.5, 0.0)
    assert (band.precision_fake, band.precision_real, band.n) == (1.0, 1.0, 6)


@pytest.mark.parametrize(
    ("target", "low", "high"),
    [(0.75, 0.5, 0.6), (0.9, 0.4, 0.8), (1.0, 0.4, 0.8)],
)  # fmt: skip
def test_the_band_widens_until_each_side_reaches_the_target(target: float, low: float, high: float) -> None:
    # Given overlapping classes: p >= 0.6 is 4/5 fake, p >= 0.8 all fake; p < 0.5 is 3/4 real, p < 0.4 all real
    band = choose_band(SCORES, LABELS, 0.5, target)
    # Then the cuts are the nearest to the threshold that reach the target, and the figures are those beyond them
    assert (band.low, band.high) == (low, high)
    assert band.precision_fake >= target and band.precision_real >= target
    assert band.share_uncertain == pytest.approx(np.mean((low <= SCORES) & (high > SCORES)))


def test_a_stricter_target_never_narrows_the_band() -> None:
    bands = [choose_band(SCORES, LABELS, 0.5, t) for t in (0.6, 0.75, 0.9, 1.0)]
    assert [b.low for b in bands] == sorted((b.low for b in bands), reverse=True)
    assert [b.high for b in bands] == sorted(b.high for b in bands)


def test_the_nearest_cut_that_reaches_the_target_wins_even_if_precision_dips_beyond_it() -> None:
    # Given four fakes and, at the very top, one real: every item at or above 0.5 is fake with precision 0.8
    band = choose_band(np.array([0.6, 0.7, 0.8, 0.9, 0.99]), np.array([1, 1, 1, 1, 0]), 0.5, 0.75)
    # Then high is the threshold: the guarantee holds for the side as a whole
    assert band.high == 0.5 and band.precision_fake == pytest.approx(0.8)


def test_sides_that_never_reach_the_target_make_everything_uncertain() -> None:
    # Given no cut above 0.5 with 90 % fakes and none below with 90 % reals
    band = choose_band(np.array([0.1, 0.2, 0.6, 0.7, 0.8]), np.array([1, 0, 0, 1, 0]), 0.5, 0.9)
    # Then the band spans all of [0, 1): nothing is stated real, only P(fake) = 1.0 would be stated fake
    assert (band.low, band.high, band.share_uncertain) == (0.0, 1.0, 1.0)
    assert band.precision_fake is None and band.precision_real is None


def test_a_side_without_validation_items_does_not_reach_the_target() -> None:
    # Given every validation item at or above the threshold, all fake
    band = choose_band(np.array([0.6, 0.7, 0.9]), np.array([1, 1, 1]), 0.5, 0.9)
    # Then the fake side needs no band, but nothing below the threshold is stated real
    assert (band.low, band.high, band.precision_real) == (0.0, 0.5, None)


def test_tied_scores_are_never_split_by_a_cut() -> None:
    # Given a real and a fake tied at 0.6 above the threshold, and a fake tied with reals at 0.3 below it
    p = np.array([0.3, 0.3, 0.3, 0.6, 0.6, 0.9])
    band = choose_band(p, np.array([0, 0, 1, 0, 1, 1]), 0.5, 0.9)
    # Then both ties fall inside the band whole: below 0.3 is empty, and 0.6 stays 1/2 fake
    assert (band.low, band.high) == (0.0, 0.9)
    assert band.share_uncertain == pytest.approx(5 / 6)


def test_the_band_always_holds_the_threshold_and_its_cuts_are_the_nearest_that_reach_the_target() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 40))
        labels = rng.integers(0, 2, n)
        p = np.round(np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1), 2)  # rounded: ties happen
        threshold, target = float(rng.uniform(0.2, 0.8)), float(rng.choice([0.6, 0.8, 0.95]))
        band = choose_band(p, labels, threshold, target)
        assert 0.0 <= band.low <= threshold <= band.high <= 1.0
        highs = [c for c in [threshold, *p[p > threshold]] if (p >= c).any() and labels[p >= c].mean() >= target]
        lows = [c for c in [threshold, *p[p < threshold]] if (p < c).any() and (labels[p < c] == 0).mean() >= target]
        assert band.high == (min(highs) if highs else 1.0)
        assert band.low == (max(lows) if lows else 0.0)


@pytest.mark.parametrize(
    ("p", "labels", "threshold", "target"),
    [([2.0], [1], 0.5, 0.9), ([0.2], [2], 0.5, 0.9), ([0.2], [1], 0.5, 0.0), ([0.2], [1], 1.5, 0.9),
     ([0.2, 0.3], [1], 0.5, 0.9), ([], [], 0.5, 0.9)],
)  # fmt: skip
def test_logits_bad_labels_and_out_of_range_targets_are_refused(p, labels, threshold, target) -> None:
    with pytest.raises(ValueError):
        choose_band(np.array(p, dtype=float), np.array(labels, dtype=int), threshold, target)
