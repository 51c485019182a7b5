"""int8 ONNX Runtime engines: ``trainer build-engine --precision int8`` through the parity gate (logits and the
calibrated P(fake)), refusals that store nothing, and the daemon serving the result. (``rebuild-engine --precision
int8`` and its gate against fp32: test_rebuild.py.)"""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from sqlalchemy import text
from torch import nn

from deepsift.daemon.cli import main as daemon_main
from deepsift.daemon.db import make_database, upgrade_database
from deepsift.engines.backends import load_engine
from deepsift.engines.errors import EngineError
from deepsift.engines.manifest import BatchRange, EngineManifest
from deepsift.engines.models import build_detector
from deepsift.engines.models.outputs import DetectorOutput
from deepsift.engines.preprocess import preprocess_image
from deepsift.engines.recipes import RECIPE_DIR, load_recipe
from deepsift.engines.store import EngineStore
from deepsift.trainer.build import PARITY_TOLERANCES, build_engine
from deepsift.trainer.cli import main
from deepsift.trainer.quantize import gemm_as_matmul

RECIPE = load_recipe("demo-tiny")
BATCH = BatchRange(min=1, opt=2, max=4)
P_FAKE_TOLERANCE = PARITY_TOLERANCES["int8"].p_fake


@pytest.fixture(scope="module")
def int8_store(tmp_path_factory: pytest.TempPathFactory) -> EngineStore:
    """An untrained full-frame demo-tiny engine built by the command line at int8."""
    folder = tmp_path_factory.mktemp("int8")
    recipe = json.loads((RECIPE_DIR / "demo-tiny.json").read_text())
    recipe["input"]["crop_mode"] = "full"  # no face detector needed to serve it
    (folder / "tiny-full.json").write_text(json.dumps(recipe))
    torch.manual_seed(0)
    argv = ["build-engine", "--recipe", str(folder / "tiny-full.json"), "--name", "tiny8", "--allow-untrained"]
    assert main(["--engine-store", str(folder / "engines"), *argv, "--precision", "int8"]) == 0
    return EngineStore(folder / "engines")


def test_an_int8_build_passes_the_parity_gate_on_p_fake_and_records_it(int8_store: EngineStore) -> None:
    # Given the int8 engine built by `trainer build-engine --precision int8`
    manifest = EngineManifest.read(int8_store.resolve("tiny8"))

    # Then it is an ONNX Runtime int8 engine whose calibrated P(fake) met the tolerance, both recorded
    backend = manifest.backend
    assert (backend.name, backend.precision, manifest.artifact) == ("onnxruntime", "int8", "model.onnx")
    figures = manifest.evaluation
    assert figures["parity_precision"] == "int8" and figures["parity_allowed_p_fake"] == P_FAKE_TOLERANCE
    assert 0.0 < figures["parity_max_abs_p_fake"] <= P_FAKE_TOLERANCE  # int8 is not exact, and within tolerance
    assert figures["parity_max_abs_logit"] <= figures["parity_allowed_logit"]
    assert str(figures["quantization"]).startswith("onnxruntime quantize_dynamic")
    # and its graph really is int8: integer matmuls over int8 weights
    graph = onnx.load(str(int8_store.resolve("tiny8") / manifest.artifact)).graph
    assert sum(n.op_type == "MatMulInteger" for n in graph.node) >= 12  # 4 per block of the 3-block ViT, and more
    assert any(w.data_type == TensorProto.INT8 for w in graph.initializer)


def test_an_int8_build_whose_p_fake_deviates_beyond_a_tight_tolerance_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a P(fake) tolerance tighter than int8's real rounding (observed ~1e-4 on this detector)
    monkeypatch.setitem(PARITY_TOLERANCES, "int8", replace(PARITY_TOLERANCES["int8"], p_fake=1e-7))
    store = EngineStore(tmp_path / "engines")
    torch.manual_seed(0)

    # When the detector is built at int8, then the P(fake) rule (alone: the logits pass) refuses it, storing nothing
    with pytest.raises(EngineError, match=r"at int8 \(.*P\(fake\) 1e-07\): p_fake max \|Δ\| .* > allowed 1\.000e-07$"):
        build_engine(build_detector(RECIPE), RECIPE, store, "tight", precision="int8", batch=BATCH)
    assert store.versions("tight") == [] and store.current_version("tight") is None


class OutlierChannel(nn.Module):
    """A detector int8 cannot represent: its first colour channel is scaled down 1000× and weighted up 1000×.
    Per-channel weight scales round the other weights (0.3 against 1000) to 0, and the per-batch activation scale
    rounds the scaled-down channel to 0: the classic outlier-channel failure of int8, with nothing patched."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("channel_scale", torch.tensor([1e-3, 1.0, 1.0]))
        self.linear = nn.Linear(3, 1, bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor([[1e3, 0.3, 0.3]]))

    def outputs(self, pixels: torch.Tensor) -> DetectorOutput:
        tokens = pixels.flatten(2).transpose(1, 2) * self.channel_scale  # N × pixels × 3
        return DetectorOutput(fake_logit=4 * torch.relu(self.linear(tokens)).mean(dim=(1, 2)) - 1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.outputs(pixels).fake_logit


def test_a_detector_int8_cannot_represent_is_refused_at_int8_and_built_at_fp32(tmp_path: Path) -> None:
    store = EngineStore(tmp_path / "engines")
    # When the outlier-channel detector is built at int8, then its P(fake) (~0.53 in torch, ~0.27 in int8) is
    # refused by the real tolerance and nothing is stored
    with pytest.raises(EngineError, match=r"at int8 .*p_fake max \|Δ\| 2\.\d+e-01 > allowed 2\.000e-02"):
        build_engine(OutlierChannel(), RECIPE, store, "outlier", precision="int8", batch=BATCH)
    assert store.versions("outlier") == []
    # and the same detector at fp32 builds: the refusal is int8's
    assert build_engine(OutlierChannel(), RECIPE, store, "outlier", batch=BATCH).backend.precision == "fp32"


def test_daemon_scan_serves_an_int8_engine_and_its_verdicts_name_precision_int8(
    int8_store: EngineStore, tmp_path: Path
) -> None:
    # Given the int8 engine current in its store, an image and a migrated database
    url = f"sqlite:///{tmp_path / 'verdicts.db'}"
    upgrade_database(url)
    image = tmp_path / "still.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(image)

    # When `daemon scan` judges it with that engine (loaded as the daemon loads any engine)
    out = io.StringIO()
    argv = ["scan", str(image), "--database-url", url, "--engine-store", str(int8_store.root), "--engine", "tiny8"]
    assert daemon_main(argv, out) == 0

    # Then its verdict is ok, and it joins the engines row that says onnxruntime int8
    database = make_database(url)
    with database.connect() as connection:
        joined = connection.execute(
            text(
                "SELECT v.status, v.p_fake, e.backend, e.precision FROM verdicts v JOIN engines e "
                "ON e.name = v.engine_name AND e.version = v.engine_version "
                "AND e.artifact_sha256 = v.engine_artifact_sha256"
            )
        ).all()
    database.dispose()
    assert [(status, backend, precision) for status, _, backend, precision in joined] == [("ok", "onnxruntime", "int8")]
    # with the P(fake) the int8 engine gives on the whole frame
    engine = load_engine(int8_store.resolve("tiny8"))
    pixels = preprocess_image(np.asarray(Image.open(image).convert("RGB")), engine.manifest.input)
    assert joined[0][1] == pytest.approx(float(engine.p_fake(pixels[None].numpy())[0]), abs=1e-6)


def gemm_model(nodes: list[onnx.NodeProto], weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    outputs = [helper.make_tensor_value_info(n.output[0], TensorProto.FLOAT, None) for n in nodes]
    initializers = [numpy_helper.from_array(w, name) for name, w in weights.items()]
    graph = helper.make_graph(nodes, "gemms", [x], outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def run_model(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def test_plain_gemms_over_weights_become_matmuls_with_the_same_outputs() -> None:
    # Given Gemms as nn.Linear exports them (B transposed, with and without a bias), one plain with B as is, and
    # one scaled by alpha (not plain: kept)
    rng = np.random.default_rng(0)
    weights = {"w": rng.standard_normal((3, 4)).astype(np.float32), "b": rng.standard_normal(3).astype(np.float32),
               "v": rng.standard_normal((4, 2)).astype(np.float32)}  # fmt: skip
    nodes = [
        helper.make_node("Gemm", ["x", "w", "b"], ["linear"], name="linear", transB=1),
        helper.make_node("Gemm", ["x", "w"], ["no_bias"], name="no_bias", transB=1),
        helper.make_node("Gemm", ["x", "v"], ["as_is"], name="as_is"),
        helper.make_node("Gemm", ["x", "w"], ["scaled"], name="scaled", transB=1, alpha=2.0),
    ]
    model = gemm_model(nodes, weights)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    before = run_model(model, x)

    # When they are rewritten, then the outputs are the same and only the scaled Gemm is left
    rewritten = gemm_as_matmul(onnx.ModelProto.FromString(model.SerializeToString()))
    for got, expected in zip(run_model(rewritten, x), before, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert sorted(n.op_type for n in rewritten.graph.node) == ["Add", "Gemm", "MatMul", "MatMul", "MatMul"]
    # with each transposed weight stored once, and the originals kept only where the scaled Gemm still reads them
    assert sorted(w.name for w in rewritten.graph.initializer) == ["b", "v__matmul", "w", "w__matmul"]
