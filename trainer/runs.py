"""Run folders: what ``trainer fit`` and ``trainer fewshot`` write, and ``evaluate``/``rebuild-engine`` read.

A run folder holds ``best.pt`` (the detector's state_dict — what ``trainer build-engine --checkpoint`` loads),
``last.pt`` (everything needed to resume), ``history.json`` (training curves), ``recipe.json`` and
``summary.json`` (best figure, step, the validation-chosen threshold and the dataset manifest). ``summary.json``
is written last, after the best checkpoint: a folder that has one finished training.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from deepsift.engines.errors import EngineError

if TYPE_CHECKING:
    from deepsift.engines.recipes import Recipe


@dataclass(frozen=True)
class RunFolder:
    """One run's folder and the canonical files in it; checkpoints and JSON files are replaced atomically."""

    path: Path
    BEST: ClassVar[str] = "best.pt"
    LAST: ClassVar[str] = "last.pt"
    RECIPE: ClassVar[str] = "recipe.json"
    SUMMARY: ClassVar[str] = "summary.json"
    HISTORY: ClassVar[str] = "history.json"

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def best(self) -> Path:
        return self.path / self.BEST

    @property
    def last(self) -> Path:
        return self.path / self.LAST

    @property
    def recipe_file(self) -> Path:
        return self.path / self.RECIPE

    @property
    def summary_file(self) -> Path:
        return self.path / self.SUMMARY

    @property
    def history_file(self) -> Path:
        return self.path / self.HISTORY

    def create(self) -> RunFolder:
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def is_finished(self) -> bool:
        """Training finished: the summary, written last, is there."""
        return self.summary_file.is_file()

    def missing(self) -> list[str]:
        """The files a finished run needs that this folder lacks."""
        return [p.name for p in (self.best, self.recipe_file, self.summary_file) if not p.is_file()]

    def write_recipe(self, recipe: Recipe) -> None:
        self.recipe_file.write_text(recipe.model_dump_json(indent=2) + "\n")

    def read_recipe(self) -> Recipe:
        from deepsift.engines.recipes import load_recipe

        return load_recipe(self.recipe_file)

    def write_summary(self, summary: dict[str, Any]) -> None:
        _replace(self.summary_file, lambda tmp: tmp.write_text(json.dumps(summary, indent=2) + "\n"))

    def read_summary(self) -> dict[str, Any]:
        return json.loads(self.summary_file.read_text())

    def write_history(self, history: list[dict[str, float]]) -> None:
        _replace(self.history_file, lambda tmp: tmp.write_text(json.dumps(history, indent=2) + "\n"))

    def read_history(self) -> list[dict[str, float]]:
        return json.loads(self.history_file.read_text())

    def save_best(self, state_dict: dict[str, Any]) -> None:
        """The detector's weights (a plain state_dict, loadable with ``weights_only=True``)."""
        _save_torch(self.best, state_dict)

    def load_best(self, map_location: Any = "cpu") -> dict[str, Any]:
        import torch

        return torch.load(self.best, map_location=map_location, weights_only=True)

    def save_last(self, checkpoint: dict[str, Any]) -> None:
        """Everything a resumed run needs: model, optimizer, scheduler, scaler, EMA, loop state and RNG states."""
        _save_torch(self.last, checkpoint)

    def load_last(self, map_location: Any = "cpu") -> dict[str, Any]:
        import torch

        return torch.load(self.last, map_location=map_location, weights_only=False)  # RNG states are not tensors


def _replace(path: Path, write: Callable[[Path], object]) -> None:
    """Write next to ``path`` and rename over it, so a reader never sees half a file."""
    tmp = path.with_suffix(".tmp")
    write(tmp)
    tmp.replace(path)


def _save_torch(path: Path, value: object) -> None:
    import torch

    _replace(path, lambda tmp: torch.save(value, tmp))


@dataclass(frozen=True)
class TrainedRun:
    """A finished run, read: its folder, recipe, best checkpoint and the dataset manifest it recorded."""

    folder: Path
    recipe: Recipe
    checkpoint: Path
    data: Path | None


def read_run(folder: Path) -> TrainedRun:
    """A run folder that finished training; ``EngineError`` when it has not or cannot be read."""
    files = RunFolder(folder)
    missing = files.missing()
    if missing:
        raise EngineError(f"{files.path} is not a finished run: {', '.join(missing)} missing")
    try:
        data = files.read_summary().get("data")
        recipe = files.read_recipe()
    except (OSError, ValueError) as e:
        raise EngineError(f"{files.path} has an unreadable {RunFolder.SUMMARY} or {RunFolder.RECIPE}: {e}") from e
    return TrainedRun(files.path, recipe, files.best, Path(data) if data else None)


def newest_run(runs: Path, recipe: str, log: Callable[[str], None] = print) -> TrainedRun:
    """The finished run of ``recipe`` under ``runs`` whose best checkpoint was written last. Runs still
    training (no summary yet) and unreadable ones are passed over."""
    found = []
    for checkpoint in Path(runs).glob(f"*/{RunFolder.BEST}"):
        try:
            found.append(read_run(checkpoint.parent))
        except EngineError as e:
            log(f"passed over: {e}")
    mine = [r for r in found if r.recipe.name == recipe]
    if not mine:
        raise EngineError(
            f"no finished run of recipe {recipe!r} under {runs} (folders with {RunFolder.BEST}, {RunFolder.SUMMARY})"
        )
    return max(mine, key=lambda r: (r.checkpoint.stat().st_mtime_ns, str(r.folder)))
