"""Run folders: the canonical files of a run, its finished state, and the newest finished run of a recipe."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from deepsift.engines.errors import EngineError
from deepsift.engines.recipes import load_recipe
from deepsift.trainer.runs import RunFolder, newest_run, read_run

RECIPE = "demo-tiny"


def write_run(folder: Path, recipe: str = RECIPE, finished: bool = True, age: int = 0, broken: bool = False) -> None:
    """A run folder on disk as `trainer fit` leaves it, its best checkpoint ``age`` seconds old."""
    folder.mkdir()
    (folder / "recipe.json").write_text("{" if broken else load_recipe(recipe).model_dump_json())
    (folder / "best.pt").write_bytes(b"weights")
    if finished:
        (folder / "summary.json").write_text("{}")
    os.utime(folder / "best.pt", (1_700_000_000 - age, 1_700_000_000 - age))


def test_a_run_folder_names_the_files_the_trainer_and_the_readme_promise(tmp_path: Path):
    run = RunFolder(tmp_path)
    assert (run.best, run.last, run.recipe_file) == (
        tmp_path / "best.pt",
        tmp_path / "last.pt",
        tmp_path / "recipe.json",
    )
    assert (run.summary_file, run.history_file) == (tmp_path / "summary.json", tmp_path / "history.json")
    assert RunFolder(str(tmp_path)) == run  # a path given as text is the same folder


def test_a_run_is_finished_once_its_summary_is_written(tmp_path: Path):
    # Given a run that has written its recipe, best checkpoint and history but not its summary
    run = RunFolder(tmp_path / "run").create()
    run.write_recipe(load_recipe(RECIPE))
    run.save_best({"w": torch.ones(2)})
    run.write_history([{"step": 1, "val_score": 0.5}])
    assert not run.is_finished() and run.missing() == ["summary.json"]
    # When the summary is written; Then the run is finished, and what was written reads back
    run.write_summary({"threshold": 0.25, "data": None})
    assert run.is_finished() and run.missing() == []
    assert run.read_summary() == {"threshold": 0.25, "data": None} and run.read_recipe().name == RECIPE
    assert run.read_history() == [{"step": 1, "val_score": 0.5}] and torch.equal(run.load_best()["w"], torch.ones(2))
    assert sorted(p.name for p in run.path.iterdir()) == ["best.pt", "history.json", "recipe.json", "summary.json"]


def test_last_pt_keeps_what_a_resumed_run_needs(tmp_path: Path):
    run = RunFolder(tmp_path)
    run.save_last({"state": {"step": 4}, "rng": {"torch": torch.get_rng_state()}})
    saved = run.load_last()
    assert saved["state"] == {"step": 4} and torch.equal(saved["rng"]["torch"], torch.get_rng_state())


def test_reading_an_unfinished_run_names_what_is_missing(tmp_path: Path):
    write_run(tmp_path / "training", finished=False)
    with pytest.raises(EngineError, match=r"not a finished run: summary\.json missing"):
        read_run(tmp_path / "training")


def test_the_newest_finished_run_of_the_recipe_is_chosen(tmp_path: Path):
    # Given run folders: two finished runs of the demo recipe, one of another recipe (newest of all), one still
    # training (no summary yet, newer still) and one with an unreadable recipe
    write_run(tmp_path / "old", age=300)
    write_run(tmp_path / "new", age=100)
    write_run(tmp_path / "other", "tiny-fusion", age=50)
    write_run(tmp_path / "training", finished=False)
    write_run(tmp_path / "broken", broken=True)
    # When the newest run of the demo recipe is looked up; Then it is "new", and the others were passed over
    passed_over: list[str] = []
    run = newest_run(tmp_path, RECIPE, passed_over.append)
    assert (run.folder, run.checkpoint, run.recipe.name) == (tmp_path / "new", tmp_path / "new" / "best.pt", RECIPE)
    assert sorted(line.split("/")[-1].split(" ")[0] for line in passed_over) == ["broken", "training"]
    with pytest.raises(EngineError, match="no finished run"):
        newest_run(tmp_path, "tiny-multitask", passed_over.append)


def test_a_run_records_the_dataset_it_was_trained_on(tmp_path: Path):
    write_run(tmp_path / "run")
    assert read_run(tmp_path / "run").data is None
    RunFolder(tmp_path / "run").write_summary({"data": "/data/manifest.jsonl"})
    assert read_run(tmp_path / "run").data == Path("/data/manifest.jsonl")
