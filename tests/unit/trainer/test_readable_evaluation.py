"""What a person reads of an evaluation: plots that say what they show and where the threshold operates,
validation figures logged as ``fit`` goes, progress on long predictions, and JSON lines only in JSON mode."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import structlog
import torch
from structlog.testing import capture_logs
from torch import nn

from deepsift.engines.recipes import load_recipe
from deepsift.trainer import plots
from deepsift.trainer.fit import fit_binary
from deepsift.trainer.logs import Progress


@pytest.fixture(autouse=True)
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


@pytest.fixture
def drawn(monkeypatch) -> dict[str, object]:
    """The figures the plots save, by file name, still open for reading."""
    figures: dict[str, object] = {}

    def keep(fig, path: Path) -> Path:
        figures[path.name] = fig
        return path

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def scored(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    fake = np.repeat([0, 1], n // 2)
    return fake, np.clip(rng.normal(0.3 + 0.4 * fake, 0.15), 0, 1)


def test_each_plot_is_titled_and_marks_the_operating_threshold(drawn, tmp_path):
    fake, p = scored()
    confusion = [[80, 20], [10, 90]]
    title = "run-7 · test split · n=200"
    plots.detection_plots(tmp_path, fake, p, confusion, ("real", "fake"), fake, title=title, threshold=0.7)
    assert set(drawn) == {"roc.png", "pr.png", "confusion.png", "scores_by_class.png"}
    for fig in drawn.values():
        assert fig._suptitle.get_text() == title
    # the ROC point is the threshold's own FPR and TPR
    roc = drawn["roc.png"].axes[0]
    point = next(line for line in roc.lines if "threshold 0.700" in line.get_label())
    flagged = p >= 0.7
    assert point.get_xdata()[0] == pytest.approx(flagged[fake == 0].mean())
    assert point.get_ydata()[0] == pytest.approx(flagged[fake == 1].mean())
    assert "100 fake, 100 real" in roc.get_title()
    assert any("threshold 0.700" in line.get_label() for line in drawn["pr.png"].axes[0].lines)
    assert "threshold 0.700" in drawn["confusion.png"].axes[0].get_title()
    hist, box = drawn["scores_by_class.png"].axes
    assert [line.get_xdata()[0] for line in hist.lines if "threshold" in line.get_label()] == [0.7]
    assert [line.get_ydata()[0] for line in box.lines if "threshold" in line.get_label()] == [0.7]


def test_the_plots_are_written_as_pngs(tmp_path):
    fake, p = scored()
    written = plots.detection_plots(tmp_path, fake, p, [[1, 0], [0, 1]], ("real", "fake"), fake, title="t")
    assert sorted(path.name for path in written) == ["confusion.png", "pr.png", "roc.png", "scores_by_class.png"]
    assert all(path.stat().st_size > 1000 for path in written)


def test_progress_is_logged_every_tenth_of_the_batches_and_at_the_end():
    with capture_logs() as logs:
        progress = Progress("evaluate test", total=25)
        for _ in range(25):
            progress.step(8)
    lines = [e for e in logs if e["event"] == "progress"]
    assert [e["batches"] for e in lines] == [f"{n}/25" for n in (3, 6, 9, 12, 15, 18, 21, 24, 25)]
    assert lines[-1]["items"] == 200 and lines[-1]["percent"] == 100 and lines[-1]["task"] == "evaluate test"


class Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x).squeeze(-1)


def test_fit_logs_the_validation_figures_at_each_evaluation():
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()
    with capture_logs() as logs:
        fit_binary(Linear(), load_recipe("demo-tiny"), (x, y), (x[:32], y[:32]), steps=4, eval_every=2)
    validations = [e for e in logs if e["event"] == "validation"]
    assert [e["step"] for e in validations] == [2, 4]
    assert all(e["n"] == 32 and "loss" in e and isinstance(e["best"], bool) for e in validations)
    assert validations[0]["best"] is True


def test_trainer_log_format_json_makes_every_log_line_json(capsys):
    from deepsift.trainer.cli import main
    from deepsift.trainer.logs import event
    from deepsift.trainer.loop import _NoBar, _progress_bar

    # When the option is given after the subcommand, as before it
    assert main(["recipes", "--log-format", "json"]) == 0
    event("validation", step=1, val_roc_auc=0.9)
    logging.getLogger("onnxruntime.quantization").warning("a library's record")
    err = capsys.readouterr().err
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert [line["event"] for line in lines] == ["validation", "a library's record"]
    # And fit's progress bar stays off: a bar is no JSON
    assert isinstance(_progress_bar(10, 0, enabled=True), _NoBar)


def test_a_bad_log_format_from_the_environment_is_one_line(monkeypatch, capsys):
    from deepsift.trainer.cli import main

    monkeypatch.setenv("DEEPSIFT_LOG_FORMAT", "yaml")
    assert main(["recipes"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("trainer: DEEPSIFT_LOG_FORMAT:") and "\n" not in err
