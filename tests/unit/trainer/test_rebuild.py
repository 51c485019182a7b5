"""``trainer rebuild-engine``: newest run → calibrated, parity-checked engine → promoted unless a gate refuses.
(Choosing the newest finished run: test_runs.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from deepsift.engines.backends import load_engine
from deepsift.engines.manifest import EngineManifest
from deepsift.engines.models import build_detector
from deepsift.engines.recipes import load_recipe
from deepsift.engines.store import EngineStore
from deepsift.trainer.cli import main
from deepsift.trainer.data import dataset_for
from deepsift.trainer.loop import FitOptions, fit
from deepsift.trainer.rebuild import engine_p_fake, fake_labels

RECIPE = "demo-tiny"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of runs holding one real training run of the demo recipe on the offline forgery task."""
    from deepsift.trainer.demo import scene_factory
    from deepsift.trainer.synthetic import write_forgery_dataset

    data = write_forgery_dataset(
        tmp_path_factory.mktemp("forgery"), scene_factory(), {"train": 360, "val": 160}, seed=3
    )
    runs = tmp_path_factory.mktemp("runs")
    recipe = load_recipe(RECIPE)
    torch.manual_seed(0)
    options = FitOptions(out=runs / "first", max_steps=120, eval_every=60, workers=0, progress=False, data=data)
    fit(recipe, build_detector(recipe), dataset_for(data, "train", recipe), dataset_for(data, "val", recipe), options)
    return runs


def rebuild(store: Path, runs: Path, *extra: str) -> int:
    return main(["--engine-store", str(store), "rebuild-engine", RECIPE, "--name", "det", "--runs", str(runs), *extra])


def add_untrained_run(runs: Path, name: str) -> Path:
    """A newer run of the same recipe whose checkpoint is the random initialisation: a regression."""
    folder = runs / name
    shutil.copytree(runs / "first", folder, ignore=shutil.ignore_patterns("*.pt"))
    torch.manual_seed(123)
    torch.save(build_detector(load_recipe(RECIPE)).state_dict(), folder / "best.pt")
    return folder


def test_a_rebuild_promotes_a_calibrated_engine_at_the_target_false_positive_rate(trained: Path, tmp_path: Path):
    # Given a finished run and an empty store
    store = EngineStore(tmp_path / "engines")

    # When the engine is rebuilt with a 5 % false-positive target
    assert rebuild(store.root, trained, "--target-fpr", "0.05") == 0

    # Then v1 is current, calibrated by temperature, with validation figures measured through the engine itself
    assert store.current_version("det") == 1
    engine = load_engine(store.resolve("det"))
    manifest = engine.manifest
    assert manifest.calibration.method == "temperature" and manifest.evaluation["val_roc_auc"] >= 0.85
    assert manifest.evaluation["val_n"] == 160 and manifest.evaluation["parity_max_abs_logit"] <= 1e-3
    # and the manifest's threshold keeps the real validation items at or under the target rate
    val = dataset_for(json.loads((trained / "first" / "summary.json").read_text())["data"], "val", load_recipe(RECIPE))
    p_fake, fake = engine_p_fake(engine, val), fake_labels(val)
    assert np.mean(p_fake[fake == 0] >= manifest.threshold) <= 0.05
    assert np.mean(p_fake[fake == 1] >= manifest.threshold) == pytest.approx(manifest.evaluation["calibration_tpr"])


def test_a_worse_checkpoint_is_stored_but_not_promoted_unless_the_margin_allows_it(trained: Path, tmp_path: Path):
    # Given a store whose current engine comes from the good run
    store = EngineStore(tmp_path / "engines")
    runs = tmp_path / "runs"
    shutil.copytree(trained, runs)
    assert rebuild(store.root, runs) == 0

    # When a newer run regressed (random weights) and the engine is rebuilt
    add_untrained_run(runs, "second")
    refused = rebuild(store.root, runs)

    # Then v2 is stored with the gate's reason but v1 stays current, and the exit code says so
    assert refused == 2 and store.versions("det") == [1, 2] and store.current_version("det") == 1
    assert "<" in EngineManifest.read(store.resolve("det", 2)).evaluation["gate"]
    # And an operator who accepts any drop gets it promoted
    assert rebuild(store.root, runs, "--max-metric-drop", "1.0") == 0 and store.current_version("det") == 3


def test_isotonic_calibration_is_stored_as_monotone_knots(trained: Path, tmp_path: Path):
    store = EngineStore(tmp_path / "engines")
    assert rebuild(store.root, trained, "--calibration", "isotonic", "--no-promote") == 0
    assert store.current_version("det") is None  # --no-promote
    calibration = load_engine(store.resolve("det", 1)).manifest.calibration
    assert calibration.method == "isotonic" and len(calibration.logits) >= 2
    assert np.all(np.diff(calibration.probabilities) >= 0)


def test_a_run_without_a_recorded_dataset_needs_data(trained: Path, tmp_path: Path, capsys):
    runs = tmp_path / "runs"
    shutil.copytree(trained, runs)
    (runs / "first" / "summary.json").write_text("{}")
    assert rebuild(tmp_path / "engines", runs) == 1
    assert "--data" in capsys.readouterr().err
