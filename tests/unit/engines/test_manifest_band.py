"""The engine manifest's optional uncertain band: ordered, holding the threshold, and absent from older manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from deepsift.engines.manifest import MANIFEST_FILE, BackendSpec, EngineManifest, UncertainBand
from deepsift.engines.preprocess import InputContract
from deepsift.engines.recipes import TaskSpec


def make_manifest(**fields: object) -> EngineManifest:
    values: dict[str, object] = dict(
        name="det", recipe="demo-tiny", recipe_sha256="a" * 64, detector="siglip_binary", task=TaskSpec(),
        input=InputContract(size=8), backend=BackendSpec(name="onnxruntime", version="1"), artifact="model.onnx",
        artifact_sha256="b" * 64, weights_sha256="c" * 64,
    )  # fmt: skip
    return EngineManifest(**(values | fields))


def test_a_band_survives_a_json_round_trip(tmp_path: Path) -> None:
    band = UncertainBand(low=0.2, high=0.8, target_precision=0.95, precision_fake=0.97, share_uncertain=0.1, n=40)
    make_manifest(threshold=0.5, uncertain_band=band).write(tmp_path)
    assert EngineManifest.read(tmp_path).uncertain_band == band


def test_a_manifest_written_before_the_band_existed_loads_without_one(tmp_path: Path) -> None:
    data = json.loads(make_manifest().model_dump_json())
    del data["uncertain_band"]
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(data))
    manifest = EngineManifest.read(tmp_path)
    assert manifest.uncertain_band is None and manifest.schema_version == 2


@pytest.mark.parametrize(("low", "high"), [(0.6, 0.9), (0.1, 0.4)])
def test_a_band_that_does_not_hold_the_threshold_is_refused(low: float, high: float) -> None:
    with pytest.raises(ValidationError, match="must hold the threshold"):
        make_manifest(threshold=0.5, uncertain_band=UncertainBand(low=low, high=high, target_precision=0.9))


def test_a_band_is_ordered_and_half_open() -> None:
    with pytest.raises(ValidationError, match="low <= high"):
        UncertainBand(low=0.7, high=0.3, target_precision=0.9)
    band = UncertainBand(low=0.3, high=0.7, target_precision=0.9)
    assert [band.contains(p) for p in (0.29, 0.3, 0.5, 0.7)] == [False, True, True, False]


def test_a_band_cannot_share_its_label_with_a_class() -> None:
    task = TaskSpec(kind="multiclass", class_names=("real", "synthetic", "uncertain"))
    with pytest.raises(ValidationError, match="class named 'uncertain'"):
        make_manifest(task=task, uncertain_band=UncertainBand(low=0.4, high=0.6, target_precision=0.9))
