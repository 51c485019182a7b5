"""PNG plots for an evaluation report (seed 000's figures): ROC, PR, confusion matrix, P(fake) histograms and
box plots by true class, and training curves from a run's ``history.json``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: object, path: Path) -> Path:
    fig.tight_layout()  # type: ignore[attr-defined]
    fig.savefig(path, dpi=110)  # type: ignore[attr-defined]
    _pyplot().close(fig)
    return path


def detection_plots(
    out: Path, fake: np.ndarray, p_fake: np.ndarray, confusion: Sequence[Sequence[int]], class_names: Sequence[str],
    targets: np.ndarray,
) -> list[Path]:  # fmt: skip
    """ROC and PR curves of P(fake), the confusion matrix over ``class_names``, and P(fake) by true class."""
    from sklearn.metrics import ConfusionMatrixDisplay, PrecisionRecallDisplay, RocCurveDisplay

    plt, written = _pyplot(), []
    out.mkdir(parents=True, exist_ok=True)
    if len(np.unique(fake)) == 2:
        fig, ax = plt.subplots(figsize=(4.5, 4))
        RocCurveDisplay.from_predictions(fake, p_fake, ax=ax, name="P(fake)")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        written.append(_save(fig, out / "roc.png"))
        fig, ax = plt.subplots(figsize=(4.5, 4))
        PrecisionRecallDisplay.from_predictions(fake, p_fake, ax=ax, name="P(fake)")
        written.append(_save(fig, out / "pr.png"))
    fig, ax = plt.subplots(figsize=(1.2 * len(class_names) + 2.5, 1.1 * len(class_names) + 2))
    ConfusionMatrixDisplay(np.asarray(confusion), display_labels=list(class_names)).plot(ax=ax, colorbar=False)
    ax.tick_params(axis="x", labelrotation=30)
    written.append(_save(fig, out / "confusion.png"))
    present = [c for c in range(len(class_names)) if (targets == c).any()]
    fig, (hist, box) = plt.subplots(1, 2, figsize=(9, 3.6))
    for c in present:
        hist.hist(p_fake[targets == c], bins=30, range=(0, 1), alpha=0.55, label=class_names[c])
    hist.set_xlabel("P(fake)")
    hist.set_ylabel("images")
    hist.legend()
    box.boxplot([p_fake[targets == c] for c in present], tick_labels=[class_names[c] for c in present])
    box.set_ylabel("P(fake)")
    written.append(_save(fig, out / "scores_by_class.png"))
    return written


def training_curves(out: Path, history: list[dict[str, float]]) -> Path | None:
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
    return _save(fig, out / "training_curves.png")
