"""Post-hoc calibration of an engine's fake logit, and the operating threshold for a target false-positive rate.

Both are fitted on validation fake-logits with labels (1 = fake) and end up in the engine manifest as a
``Calibration`` and a ``threshold`` on the calibrated P(fake), which the daemon applies as ``p >= threshold``.

- ``temperature``: ``sigmoid(logit / T)`` with T > 0 minimising the negative log-likelihood (Guo et al., 2017).
  One parameter, so it cannot overfit a small validation set, and it keeps the ranking (AUC) unchanged.
- ``isotonic``: a monotone step function from logit to P(fake) (scikit-learn's ``IsotonicRegression``), stored
  as at most ``max_knots`` knots that ``Calibration`` interpolates linearly. It also fixes a shifted or
  non-sigmoid score, but wants a few hundred validation items per class and merges close scores into ties.

The calibration served is fitted on all the validation items, but its figures (``ece_after``, ``nll_after``,
``brier_after``) are scored on items it was not fitted on: 2-fold cross-fitting, stratified and seeded, gives each
item the P(fake) of a calibration fitted on the other fold (``scored_on`` says so; ``ece_after_in_sample`` beside
it shows how much fitting and scoring on the same items flatters — isotonic reaches 0 there). A target FPR below
``1 / n_real`` (``fpr_resolution``) cannot be measured on these items: it is logged as a warning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn import metrics
from sklearn.isotonic import IsotonicRegression

from deepsift.engines.manifest import Calibration
from deepsift.trainer.logs import warning

Method = Literal["none", "temperature", "isotonic"]
MAX_KNOTS = 200
_LOG_T_BOUNDS = (math.log(1e-3), math.log(1e3))
HELD_OUT_FOLDS = 2
HELD_OUT_SEED = 0
CROSS_FITTED = f"held out: {HELD_OUT_FOLDS}-fold cross-fitting, stratified, seed {HELD_OUT_SEED}"
IN_SAMPLE = "in sample: too few items of a class to hold any out"


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold on P(fake) and what it achieves on the items it was chosen on (a fake is ``p >= threshold``)."""

    threshold: float
    fpr: float
    tpr: float
    n_real: int
    n_fake: int


@dataclass(frozen=True)
class CalibrationResult:
    calibration: Calibration
    threshold: float
    report: dict[str, float | int | str]


def _checked(scores: np.ndarray, labels: np.ndarray, what: str = "logits") -> tuple[np.ndarray, np.ndarray]:
    """Scores as float64 and labels as int, or a ValueError saying why they cannot be calibrated on."""
    z = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if z.size == 0:
        raise ValueError(f"no {what} to calibrate on: the validation set is empty")
    if z.shape != y.shape:
        raise ValueError(f"{z.size} {what} but {y.size} labels")
    if not np.all(np.isfinite(z)):
        raise ValueError(f"{int(np.sum(~np.isfinite(z)))} {what} are NaN or infinite")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 (real) or 1 (fake)")
    y = y.astype(np.int64)
    if y.min() == y.max():
        raise ValueError(f"calibration needs both real and fake items; all {y.size} are {'fake' if y[0] else 'real'}")
    return z, y


def negative_log_likelihood(p: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy of P(fake) ``p`` against labels (1 = fake); scikit-learn clips p away from 0 and 1."""
    return float(metrics.log_loss(np.asarray(labels), np.asarray(p, dtype=np.float64), labels=[0, 1]))


def brier_score(p: np.ndarray, labels: np.ndarray) -> float:
    """Mean squared difference between P(fake) and the label."""
    return float(metrics.brier_score_loss(np.asarray(labels), np.asarray(p, dtype=np.float64), pos_label=1))


def expected_calibration_error(p: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE of P(fake): items fall into ``bins`` equal-width bins over [0, 1] (the last one closed at 1), and
    the result is Σ (bin count / N)·|fraction of fakes − mean P(fake)| over the non-empty bins.

    This is the reliability of P(fake) itself, not the top-label ECE of Guo et al. (which bins max(p, 1 − p));
    the two agree up to binning for binary tasks. Empty bins contribute nothing.
    """
    p = np.asarray(p, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if p.size == 0 or p.shape != y.shape:
        raise ValueError(f"ECE needs equally many probabilities and labels, got {p.size} and {y.size}")
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    count = np.bincount(which, minlength=bins)
    gap = np.abs(np.bincount(which, weights=y, minlength=bins) - np.bincount(which, weights=p, minlength=bins))
    return float(gap.sum() / count.sum())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> Calibration:
    """Temperature scaling: the T in [1e-3, 1e3] minimising the NLL of ``sigmoid(logit / T)``.

    The NLL is convex in 1/T, hence unimodal in log T, so a bounded scalar search finds its minimum. Scores
    that rank fakes below reals push T to the upper bound (P(fake) near 0.5 everywhere).
    """
    z, y = _checked(logits, labels)

    def nll(log_t: float) -> float:
        s = z / math.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, s) - y * s))

    best = minimize_scalar(nll, bounds=_LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-6})
    return Calibration(method="temperature", temperature=float(math.exp(best.x)))


def _compact_knots(x: np.ndarray, p: np.ndarray, max_knots: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_knots`` of the knots (always both ends), added greedily where linear interpolation
    through the kept ones misses a dropped knot most. A subset of monotone knots stays monotone."""
    if len(x) <= max_knots:
        return x, p
    keep = np.zeros(len(x), dtype=bool)
    keep[[0, -1]] = True
    for _ in range(max_knots - 2):
        miss = np.abs(np.interp(x, x[keep], p[keep]) - p)
        worst = int(np.argmax(miss))
        if miss[worst] <= 1e-9:
            break
        keep[worst] = True
    return x[keep], p[keep]


def fit_isotonic(logits: np.ndarray, labels: np.ndarray, max_knots: int = MAX_KNOTS) -> Calibration:
    """Isotonic regression of the label on the logit, stored as at most ``max_knots`` knots.

    Beyond the fitted range P(fake) stays at the end knots' values (``out_of_bounds="clip"``), as
    ``Calibration.p_fake`` does.
    """
    z, y = _checked(logits, labels)
    if max_knots < 2:
        raise ValueError(f"max_knots must be at least 2, got {max_knots}")
    if np.unique(z).size < 2:
        raise ValueError("isotonic calibration needs at least two distinct logits")
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(z, y)
    knots = np.asarray(iso.X_thresholds_, np.float64), np.asarray(iso.y_thresholds_, np.float64)
    x, p = _compact_knots(*knots, max_knots)
    p = np.clip(np.maximum.accumulate(p), 0.0, 1.0)  # guard against float noise breaking monotonicity
    return Calibration(method="isotonic", logits=tuple(map(float, x)), probabilities=tuple(map(float, p)))


def threshold_for_fpr(p_fake: np.ndarray, labels: np.ndarray, target_fpr: float) -> OperatingPoint:
    """The smallest threshold t in [0, 1] whose false-positive rate on the reals (share with ``p >= t``) is at
    most ``target_fpr``, with the rates it achieves on these items.

    With k = ⌊target·n_real⌋ false positives allowed, t sits just above the (k+1)-th highest real score (the
    next float up), so reals tied at that score are all passed — a threshold cannot split a tie, and the FPR
    reached may be below the target. With fewer than 1/target reals k is 0: t lands just above the highest real
    score and the FPR is 0, a coarse estimate worth reading beside ``n_real``. Raises ValueError when reals score
    exactly 1.0 beyond the allowance, since no threshold in [0, 1] then meets the target.
    """
    p, y = _checked(p_fake, labels, what="probabilities")
    if p.min() < 0.0 or p.max() > 1.0:
        raise ValueError("threshold_for_fpr takes calibrated probabilities in [0, 1], not logits")
    if not 0.0 <= target_fpr <= 1.0:
        raise ValueError(f"target FPR must lie in [0, 1], got {target_fpr}")
    reals = np.sort(p[y == 0])[::-1]
    allowed = math.floor(target_fpr * reals.size + 1e-9)
    if allowed >= reals.size:
        threshold = 0.0
    else:
        threshold = float(np.nextafter(reals[allowed], np.inf))
        if threshold > 1.0:
            raise ValueError(
                f"no threshold in [0, 1] reaches FPR <= {target_fpr}: {int(np.sum(reals >= 1.0))} reals score 1.0"
            )
    flagged = p >= threshold
    return OperatingPoint(
        threshold=threshold,
        fpr=float(flagged[y == 0].mean()),
        tpr=float(flagged[y == 1].mean()),
        n_real=int(reals.size),
        n_fake=int(y.size - reals.size),
    )


def fit_calibration(logits: np.ndarray, labels: np.ndarray, method: Method) -> Calibration:
    if method == "temperature":
        return fit_temperature(logits, labels)
    if method == "isotonic":
        return fit_isotonic(logits, labels)
    if method == "none":
        return Calibration()
    raise ValueError(f"unknown calibration method {method!r}; expected none, temperature or isotonic")


def _folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A fold number per item: each class shuffled (seeded) and dealt round the folds, so every fold holds both."""
    rng = np.random.default_rng(seed)
    fold = np.empty(labels.size, dtype=np.int64)
    for value in (0, 1):
        members = rng.permutation(np.flatnonzero(labels == value))
        fold[members] = np.arange(members.size) % folds
    return fold


def held_out_p_fake(
    logits: np.ndarray, labels: np.ndarray, method: Method, folds: int = HELD_OUT_FOLDS, seed: int = HELD_OUT_SEED
) -> np.ndarray | None:
    """Each item's P(fake) from ``method`` fitted on the other folds (cross-fitting), to score a calibration on
    items it never saw; None when a fold cannot be fitted (a class with fewer items than folds, tied logits)."""
    z, y = _checked(logits, labels)
    fold, p = _folds(y, folds, seed), np.empty(z.size, dtype=np.float64)
    for k in range(folds):
        fitted_on = fold != k
        try:
            calibration = fit_calibration(z[fitted_on], y[fitted_on], method)
        except ValueError:
            return None
        p[~fitted_on] = calibration.p_fake_array(z[~fitted_on])
    return p


def _resolution(point: OperatingPoint, target_fpr: float) -> float:
    """The smallest FPR the reals can measure; a warning when the target lies below it."""
    resolution = 1.0 / point.n_real
    if 0.0 < target_fpr < resolution:
        warning(
            "target_fpr_below_resolution", target_fpr=target_fpr, n_real=point.n_real, fpr_resolution=resolution,
            advice=f"the threshold only keeps all {point.n_real} validation reals below it; "
            f"measuring FPR {target_fpr} wants at least {math.ceil(1 / target_fpr)} reals",
        )  # fmt: skip
    return resolution


def calibrate(logits: np.ndarray, labels: np.ndarray, method: Method, target_fpr: float) -> CalibrationResult:
    """Fit ``method`` on validation fake-logits and labels (1 = fake), then pick the threshold on the calibrated
    P(fake) for ``target_fpr`` on the same items. The report (flat, so it fits ``EngineManifest.evaluation``)
    compares ECE, NLL and Brier of the raw ``sigmoid(logit)`` with the calibrated P(fake), the latter scored on
    held-out items (``scored_on``)."""
    z, y = _checked(logits, labels)
    calibration = fit_calibration(z, y, method)
    before, in_sample = Calibration().p_fake_array(z), calibration.p_fake_array(z)
    held_out = held_out_p_fake(z, y, method)
    after = in_sample if held_out is None else held_out
    point = threshold_for_fpr(in_sample, y, target_fpr)
    report: dict[str, float | int | str] = {
        "method": method,
        "n": int(y.size),
        "n_real": point.n_real,
        "n_fake": point.n_fake,
        "scored_on": IN_SAMPLE if held_out is None else CROSS_FITTED,
        "ece_before": expected_calibration_error(before, y),
        "ece_after": expected_calibration_error(after, y),
        "ece_after_in_sample": expected_calibration_error(in_sample, y),
        "nll_before": negative_log_likelihood(before, y),
        "nll_after": negative_log_likelihood(after, y),
        "brier_before": brier_score(before, y),
        "brier_after": brier_score(after, y),
        "target_fpr": float(target_fpr),
        "fpr_resolution": _resolution(point, target_fpr),
        "threshold": point.threshold,
        "fpr": point.fpr,
        "tpr": point.tpr,
    }
    if method == "temperature":
        report["temperature"] = calibration.temperature
    if method == "isotonic":
        report["knots"] = len(calibration.logits)
    return CalibrationResult(calibration=calibration, threshold=point.threshold, report=report)
