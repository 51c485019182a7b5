"""The uncertain band around an engine's operating threshold, chosen on validation: where the engine says neither
"fake" nor "real" with the precision an operator asks for, the daemon labels the media ``uncertain`` and the
review queue gets it.

``high`` is the smallest cut at or above the threshold whose validation items with ``p >= high`` are fake with at
least the target precision; ``low`` the largest cut at or below it whose items with ``p < low`` are real with at
least that precision (negative predictive value). Decisions at the edges:

- Cuts are the threshold itself and the validation scores on that side of it, so a cut never splits tied scores:
  items tied at ``high`` are all stated fake, items tied at ``low`` all fall inside the band.
- A side with no validation item is not a precision that reaches the target.
- A side that never reaches the target gets the widest cut: ``high = 1.0`` (only a saturated P(fake) of exactly
  1.0 is still stated fake) and ``low = 0.0`` (nothing is stated real); the band's figures show it.
- Precision is not monotone in the cut: the smallest (largest) cut that reaches the target is taken, as
  ``trainer.metrics.threshold_for_precision`` does, so the guarantee is for the whole side beyond the cut.
"""

from __future__ import annotations

import numpy as np

from deepsift.engines.manifest import UncertainBand


def _checked(p_fake: np.ndarray, labels: np.ndarray, threshold: float, target: float) -> tuple[np.ndarray, np.ndarray]:
    p, y = np.asarray(p_fake, dtype=np.float64).ravel(), np.asarray(labels).ravel()
    if p.shape != y.shape or p.size == 0:
        raise ValueError(f"need as many labels as scores, and some of them: {p.size} scores, {y.size} labels")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (real) or 1 (fake)")
    if not (np.isfinite(p).all() and p.min() >= 0.0 and p.max() <= 1.0):
        raise ValueError("the band is chosen on calibrated probabilities in [0, 1], not logits")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target precision must lie in (0, 1], got {target}")
    return p, y.astype(np.int64)


def _precision(hits: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """hits / counts, NaN where a side is empty (NaN never reaches a target)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)


def choose_band(p_fake: np.ndarray, labels: np.ndarray, threshold: float, target_precision: float) -> UncertainBand:
    """The band ``[low, high)`` around ``threshold`` (see the module docstring), with its figures on these items."""
    p, y = _checked(p_fake, labels, threshold, target_precision)
    order = np.argsort(p, kind="stable")
    ascending = p[order]
    fakes_below = np.concatenate([[0], np.cumsum(y[order])])  # fakes among the k lowest scores, k = 0..n

    highs = np.unique(np.concatenate([[threshold], p[p > threshold]]))
    k = np.searchsorted(ascending, highs, side="left")  # items with p < cut
    above = _precision(y.sum() - fakes_below[k], p.size - k)
    reached = np.nonzero(above >= target_precision)[0]
    high = float(highs[reached[0]]) if reached.size else 1.0

    lows = np.unique(np.concatenate([[threshold], p[p < threshold]]))
    k = np.searchsorted(ascending, lows, side="left")
    below = _precision(k - fakes_below[k], k)
    reached = np.nonzero(below >= target_precision)[0]
    low = float(lows[reached[-1]]) if reached.size else 0.0
    return _band(p, y, low, high, target_precision)


def _band(p: np.ndarray, y: np.ndarray, low: float, high: float, target: float) -> UncertainBand:
    fake_side, real_side = p >= high, p < low
    return UncertainBand(
        low=low,
        high=high,
        target_precision=target,
        precision_fake=float(y[fake_side].mean()) if fake_side.any() else None,
        precision_real=float(np.mean(y[real_side] == 0)) if real_side.any() else None,
        share_uncertain=float(np.mean(~fake_side & ~real_side)),
        n=int(p.size),
    )
