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
from deepsift.trainer.build import parity_golden
from deepsift.trainer.cli import main
from deepsift.trainer.data import ManifestRow, dataset_for, read_manifest, write_manifest
from deepsift.trainer.export import reference_outputs
from deepsift.trainer.gates import engine_p_fake, fake_labels
from deepsift.trainer.loop import FitOptions, fit
from deepsift.trainer.metrics import binary_metrics
from deepsift.trainer.rebuild import RebuildOptions, rebuild_engine

RECIPE = "demo-tiny"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of runs holding one real training run of the demo recipe on the offline forgery task."""
    from deepsift.trainer.demo import scene_factory
    from deepsift.trainer.synthetic import write_forgery_dataset

    data = write_forgery_dataset(
        tmp_path_factory.mktemp("forgery"), scene_factory(), {"train": 360, "val": 160, "test": 80}, seed=3
    )  # the test split (never trained or calibrated on) stands in for reviewed media
    runs = tmp_path_factory.mktemp("runs")
    recipe = load_recipe(RECIPE)
    torch.manual_seed(0)
    options = FitOptions(out=runs / "first", max_steps=120, eval_every=60, workers=0, progress=False, data=data)
    fit(recipe, build_detector(recipe), dataset_for(data, "train", recipe), dataset_for(data, "val", recipe), options)
    return runs


def rebuild(store: Path, runs: Path, *extra: str) -> int:
    return main(["--engine-store", str(store), "rebuild-engine", RECIPE, "--name", "det", "--runs", str(runs), *extra])


def recorded_data(runs: Path) -> Path:
    return Path(json.loads((runs / "first" / "summary.json").read_text())["data"])


def rows_of(manifest: Path, split: str, shuffle_labels: bool = False) -> list[ManifestRow]:
    """The split's rows with absolute paths, so they can be written into a manifest anywhere."""
    rows = [r for r in read_manifest(manifest) if r.split == split]
    labels = [r.label for r in rows]
    if shuffle_labels:
        labels = [str(label) for label in np.random.default_rng(0).permutation(labels)]

    def absolute(path: str) -> str:
        return path and str(manifest.parent / path)

    return [
        r.model_copy(update={"path": absolute(r.path), "mask_path": absolute(r.mask_path), "label": label})
        for r, label in zip(rows, labels, strict=True)
    ]


def reviewed_manifest(runs: Path, folder: Path) -> Path:
    """What `trainer export-reviews` writes: reviewed media with their moderators' labels, as the test split."""
    return write_manifest(rows_of(recorded_data(runs), "test"), folder / "reviewed.csv")


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


def test_a_rebuild_with_an_uncertain_band_stores_it_around_the_threshold(trained: Path, tmp_path: Path):
    # Given a finished run
    store = EngineStore(tmp_path / "engines")

    # When the engine is rebuilt with a band for 95 % precision
    assert rebuild(store.root, trained, "--target-fpr", "0.05", "--uncertain-precision", "0.95") == 0

    # Then the manifest holds the band around the threshold, and its claims hold on validation through the engine
    engine = load_engine(store.resolve("det"))
    manifest, band = engine.manifest, engine.manifest.uncertain_band
    assert band is not None and band.target_precision == 0.95 and band.n == 160
    assert band.low <= manifest.threshold <= band.high
    val = dataset_for(recorded_data(trained), "val", load_recipe(RECIPE))
    p_fake, fake = engine_p_fake(engine, val), fake_labels(val)
    if (p_fake >= band.high).any():
        assert fake[p_fake >= band.high].mean() >= 0.95
    if (p_fake < band.low).any():
        assert (fake[p_fake < band.low] == 0).mean() >= 0.95
    inside = np.mean((p_fake >= band.low) & (p_fake < band.high))
    assert manifest.evaluation["val_uncertain_share"] == pytest.approx(inside) == pytest.approx(band.share_uncertain)
    assert (manifest.evaluation["band_low"], manifest.evaluation["band_high"]) == (band.low, band.high)


def test_without_a_band_the_manifest_has_none(trained: Path, tmp_path: Path):
    store = EngineStore(tmp_path / "engines")
    assert rebuild(store.root, trained, "--no-promote") == 0
    manifest = EngineManifest.read(store.resolve("det", 1))
    assert manifest.uncertain_band is None and "band_low" not in manifest.evaluation


def test_the_reviewed_gate_refuses_an_engine_worse_on_reviewed_media_even_if_validation_cannot_tell(
    trained: Path, tmp_path: Path
):
    # Given the good engine current, reviewed media with their true labels, and a regressed (random-weights) run
    store = EngineStore(tmp_path / "engines")
    runs = tmp_path / "runs"
    shutil.copytree(trained, runs)
    reviewed = reviewed_manifest(runs, tmp_path)
    assert rebuild(store.root, runs, "--run", str(runs / "first")) == 0
    regressed = add_untrained_run(runs, "second")
    # and a validation split whose labels carry no signal, on which neither engine is better
    shuffled = write_manifest(rows_of(recorded_data(runs), "val", shuffle_labels=True), tmp_path / "val.csv")

    # When the regressed run is rebuilt with a generous margin and the reviewed gate
    refused = rebuild(store.root, runs, "--run", str(regressed), "--data", str(shuffled), "--reviewed", str(reviewed),
                      "--max-metric-drop", "0.2")  # fmt: skip

    # Then the validation gate passed, the reviewed gate refused, and v1 stays current
    assert refused == 2 and store.current_version("det") == 1
    evaluation = EngineManifest.read(store.resolve("det", 2)).evaluation
    assert evaluation["gate"].startswith("refused by the reviewed gate: reviewed roc_auc")
    assert "validation" not in evaluation["gate"] and evaluation["val_roc_auc"] < 0.7
    assert evaluation["reviewed_n"] == 80 and evaluation["reviewed_split"] == "test"
    assert evaluation["reviewed_roc_auc"] < reviewed_auc(store, reviewed) - 0.2


def reviewed_auc(store: EngineStore, reviewed: Path) -> float:
    """The current engine's ROC-AUC on the reviewed media, measured here."""
    engine = load_engine(store.resolve("det"))
    items = dataset_for(reviewed, "test", load_recipe(RECIPE))
    return binary_metrics(fake_labels(items), engine_p_fake(engine, items), engine.manifest.threshold)["roc_auc"]


def test_the_reviewed_gate_passes_an_engine_better_on_reviewed_media(trained: Path, tmp_path: Path):
    # Given a regressed (random-weights) engine current
    store = EngineStore(tmp_path / "engines")
    runs = tmp_path / "runs"
    shutil.copytree(trained, runs)
    regressed = add_untrained_run(runs, "second")
    assert rebuild(store.root, runs, "--run", str(regressed)) == 0

    # When the good run is rebuilt with the reviewed gate
    assert (
        rebuild(store.root, runs, "--run", str(runs / "first"), "--reviewed", str(reviewed_manifest(runs, tmp_path)))
        == 0
    )

    # Then both gates passed, and each engine's figure on the reviewed media is recorded
    manifest = EngineManifest.read(store.resolve("det"))
    assert manifest.version == 2
    assert (
        manifest.evaluation["gate"].startswith("validation roc_auc")
        and "; reviewed roc_auc" in manifest.evaluation["gate"]
    )
    assert manifest.evaluation["reviewed_roc_auc"] >= 0.85 and manifest.evaluation["reviewed_n"] == 80


def test_reviewed_media_without_the_split_or_a_band_target_out_of_range_fail_before_building(
    trained: Path, tmp_path: Path, capsys
):
    store = EngineStore(tmp_path / "engines")
    reviewed = reviewed_manifest(trained, tmp_path)
    assert rebuild(store.root, trained, "--reviewed", str(reviewed), "--reviewed-split", "val") == 1
    assert "reviewed items" in capsys.readouterr().err
    assert rebuild(store.root, trained, "--uncertain-precision", "1.5") == 1
    assert "--uncertain-precision" in capsys.readouterr().err
    assert store.versions("det") == []


def detector_val_auc(runs: Path) -> float:
    """ROC-AUC of the run's detector itself (eager torch fp32) on its validation split, measured here."""
    recipe = load_recipe(RECIPE)
    model = build_detector(recipe).eval()
    model.load_state_dict(torch.load(runs / "first" / "best.pt", map_location="cpu", weights_only=True))
    val = dataset_for(recorded_data(runs), "val", recipe)
    with torch.no_grad():
        logits = model(torch.stack([val[i]["pixels"] for i in range(len(val))])).numpy()
    return binary_metrics(fake_labels(val), logits, threshold=0.0)["roc_auc"]


def test_an_int8_rebuild_is_gated_on_its_validation_auc_against_fp32_and_refused_just_beyond_the_bound(
    trained: Path, tmp_path: Path
):
    # Given a finished run; When it is rebuilt at int8
    store = EngineStore(tmp_path / "engines")
    assert rebuild(store.root, trained, "--precision", "int8") == 0

    # Then v1 is an int8 engine, promoted, whose manifest records its validation AUC beside the fp32 detector's
    # (measured here again) and the allowed drop
    manifest = EngineManifest.read(store.resolve("det"))
    figures = manifest.evaluation
    assert manifest.backend.precision == "int8" and store.current_version("det") == 1
    assert figures["int8_val_roc_auc_fp32"] == pytest.approx(detector_val_auc(trained), abs=1e-3)
    drop = figures["int8_val_roc_auc_drop"]
    assert drop == pytest.approx(figures["int8_val_roc_auc_fp32"] - figures["int8_val_roc_auc"])
    assert drop <= figures["int8_max_roc_auc_drop"] == 0.005 and figures["val_roc_auc"] >= 0.85
    assert "int8 roc_auc" in figures["gate"] and "allowed drop 0.005" in figures["gate"]
    # and its P(fake) parity was checked through the calibration fitted after the build
    golden = parity_golden(manifest.input.size, manifest.batch)
    model = build_detector(load_recipe(RECIPE))
    model.load_state_dict(torch.load(trained / "first" / "best.pt", map_location="cpu", weights_only=True))
    reference = reference_outputs(model, manifest.outputs, golden)["logit"]
    engine = load_engine(store.resolve("det"))
    deviation = np.abs(engine.p_fake(golden.numpy()) - manifest.calibration.p_fake_array(reference)).max()
    assert manifest.calibration.method == "temperature" and manifest.calibration.temperature != 1.0
    assert figures["parity_max_abs_p_fake"] == pytest.approx(deviation, abs=1e-6) and deviation <= 0.02

    # When the same run is rebuilt with an allowed drop just under the one measured
    options = RebuildOptions(recipe=RECIPE, name="det", runs=trained, precision="int8", max_int8_auc_drop=drop - 1e-3)
    result = rebuild_engine(store, options, log=lambda line: None)

    # Then v2 is stored with its figures but refused by the int8 gate alone, and v1 stays current
    assert not result.promoted and store.versions("det") == [1, 2] and store.current_version("det") == 1
    assert result.gate.reason.startswith("refused by the int8 gate: int8 roc_auc")
    assert [g.name for g in result.gates if not g.passed] == ["int8"]
    assert result.manifest.evaluation["int8_val_roc_auc_drop"] == pytest.approx(drop)
