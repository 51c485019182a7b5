"""PNG plots for an evaluation report (seed 000's figures): ROC, PR, confusion matrix, P(fake) histograms and
box plots by true class, and training curves from a run's ``history.json``.

Each figure says what it shows without the command line beside it: its title names the run (or checkpoint), the
split and the number of items, and the operating threshold is marked on it (the ROC and PR points it gives, a line
on the score plots) with its value."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _titled(fig: Any, title: str) -> None:
    if title:
        fig.suptitle(title, fontsize=9)


def _operating_point(fake: np.ndarray, p_fake: np.ndarray, threshold: float) -> tuple[float, float, float]:
    """(FPR, TPR, precision) of ``p_fake >= threshold``; precision 1.0 when nothing is flagged (sklearn's rule)."""
    flagged = p_fake >= threshold
    fpr, tpr = float(flagged[fake == 0].mean()), float(flagged[fake == 1].mean())
    precision = float(fake[flagged].mean()) if flagged.any() else 1.0
    return fpr, tpr, precision


def _save(fig: object, path: Path) -> Path:
    fig.tight_layout()  # type: ignore[attr-defined]
    fig.savefig(path, dpi=110)  # type: ignore[attr-defined]
    _pyplot().close(fig)
    return path


def detection_plots(
    out: Path, fake: np.ndarray, p_fake: np.ndarray, confusion: Sequence[Sequence[int]], class_names: Sequence[str],
    targets: np.ndarray, *, title: str = "", threshold: float = 0.5,
) -> list[Path]:  # fmt: skip
    """ROC and PR curves of P(fake) with the operating point at ``threshold``, the confusion matrix over
    ``class_names`` at it, and P(fake) by true class with the threshold drawn; ``title`` on each figure."""
    fake, p_fake = np.asarray(fake).astype(int), np.asarray(p_fake, dtype=np.float64)
    out.mkdir(parents=True, exist_ok=True)
    written = _curves(out, fake, p_fake, title, threshold) if len(np.unique(fake)) == 2 else []
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.2 * len(class_names) + 2.5, 1.1 * len(class_names) + 2.4))
    from sklearn.metrics import ConfusionMatrixDisplay

    ConfusionMatrixDisplay(np.asarray(confusion), display_labels=list(class_names)).plot(ax=ax, colorbar=False)
    ax.tick_params(axis="x", labelrotation=30)
    ax.set_title(f"confusion at threshold {threshold:.3f}", fontsize=9)
    _titled(fig, title)
    written.append(_save(fig, out / "confusion.png"))
    written.append(_scores_by_class(out, p_fake, class_names, np.asarray(targets), title, threshold))
    return written


def _curves(out: Path, fake: np.ndarray, p_fake: np.ndarray, title: str, threshold: float) -> list[Path]:
    """ROC and PR curves, each with the point the threshold operates at."""
    from sklearn.metrics import PrecisionRecallDisplay, RocCurveDisplay

    plt = _pyplot()
    fpr, tpr, precision = _operating_point(fake, p_fake, threshold)
    point = f"threshold {threshold:.3f}"
    fig, ax = plt.subplots(figsize=(4.5, 4.3))
    RocCurveDisplay.from_predictions(fake, p_fake, ax=ax, name="P(fake)")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.plot([fpr], [tpr], "ro", label=f"{point}: FPR {fpr:.3f}, TPR {tpr:.3f}")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"ROC ({int((fake == 1).sum())} fake, {int((fake == 0).sum())} real)", fontsize=9)
    _titled(fig, title)
    roc = _save(fig, out / "roc.png")
    fig, ax = plt.subplots(figsize=(4.5, 4.3))
    PrecisionRecallDisplay.from_predictions(fake, p_fake, ax=ax, name="P(fake)")
    ax.plot([tpr], [precision], "ro", label=f"{point}: recall {tpr:.3f}, precision {precision:.3f}")
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title("precision-recall of P(fake)", fontsize=9)
    _titled(fig, title)
    return [roc, _save(fig, out / "pr.png")]


def _scores_by_class(
    out: Path, p_fake: np.ndarray, class_names: Sequence[str], targets: np.ndarray, title: str, threshold: float
) -> Path:
    """Histograms and box plots of P(fake) per true class, the threshold as a line across both."""
    plt = _pyplot()
    present = [c for c in range(len(class_names)) if (targets == c).any()]
    fig, (hist, box) = plt.subplots(1, 2, figsize=(9, 3.9))
    for c in present:
        hist.hist(p_fake[targets == c], bins=30, range=(0, 1), alpha=0.55, label=class_names[c])
    hist.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.3f}")
    hist.set_xlabel("P(fake)")
    hist.set_ylabel("images")
    hist.legend(fontsize=7)
    box.boxplot([p_fake[targets == c] for c in present], tick_labels=[class_names[c] for c in present])
    box.axhline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.3f}")
    box.set_ylabel("P(fake)")
    hist.set_title("P(fake) by true class", fontsize=9)
    _titled(fig, title)
    return _save(fig, out / "scores_by_class.png")


def training_curves(out: Path, history: list[dict[str, float]], title: str = "") -> Path | None:
    """Training losses and validation figures against the optimizer step."""
    if not history:
        return None
    plt = _pyplot()
    steps = [row["step"] for row in history]
    fig, (losses, scores) = plt.subplots(1, 2, figsize=(9, 3.6))
    for key in sorted({k for row in history for k in row}):
        values = [row.get(key, np.nan) for row in history]
        if key.startswith("train_"):
            losses.plot(steps, values, marker=".", label=key.removeprefix("train_"))
        elif key.startswith("val_"):
            scores.plot(steps, values, marker=".", label=key.removeprefix("val_"))
    losses.set_xlabel("step")
    losses.set_title("training loss")
    losses.legend(fontsize=7)
    scores.set_xlabel("step")
    scores.set_title("validation")
    scores.legend(fontsize=7)
    _titled(fig, title)
    return _save(fig, out / "training_curves.png")
