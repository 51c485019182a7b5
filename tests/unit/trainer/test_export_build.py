"""Engine builds of the tiny demo detector: ONNX Runtime against torch, the stored manifest, loading an engine back,
and the parity gate by precision. One pair of builds (v1, then v2 with one weight changed) is shared by the module,
since an export takes several seconds. Every tiny recipe and the torch backend: test_export_recipes.py."""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from torch import nn

from deepsift.engines.backends import LoadedEngine, load_engine
from deepsift.engines.errors import EngineError
from deepsift.engines.manifest import MANIFEST_FILE, BatchRange, Calibration, EngineManifest, sha256_file
from deepsift.engines.models import build_detector
from deepsift.engines.models.outputs import DetectorOutput
from deepsift.engines.recipes import load_recipe
from deepsift.engines.store import EngineStore
from deepsift.trainer.build import (
    FP32_PARITY_TOLERANCE,
    PARITY_TOLERANCES,
    build_engine,
    build_onnx_engine,
    check_parity,
)
from deepsift.trainer.export import ONNX_OPSET, golden_batch, weights_sha256

RECIPE = load_recipe("demo-tiny")
SIZE = RECIPE.input.size
BATCH = BatchRange(min=1, opt=2, max=4)  # small, so that 17 images must be split and 17 exceeds the max
# Max |torch − ONNX Runtime| on fp32 logits. Both run the same fp32 maths on CPU (observed ~1e-7); 1e-4 leaves room
# for ORT's fused kernels and is ten times stricter than the build's own refusal threshold.
TOLERANCE = 1e-4


@dataclass(frozen=True)
class Built:
    store: EngineStore
    model: nn.Module
    changed: nn.Module
    v1: EngineManifest
    v2: EngineManifest
    current_after_v1: int | None
    current_after_v2: int | None


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """v1 from the tiny detector (promoted), then v2 from a copy with one weight changed (not promoted)."""
    torch.manual_seed(0)
    model = build_detector(RECIPE)
    store = EngineStore(tmp_path_factory.mktemp("engines"))
    calibration = Calibration(method="temperature", temperature=2.0)
    v1 = build_onnx_engine(model, RECIPE, store, "tiny", batch=BATCH, calibration=calibration, threshold=0.7)
    current_after_v1 = store.current_version("tiny")
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.head.mlp[-1].bias += 0.5
    v2 = build_onnx_engine(changed, RECIPE, store, "tiny", batch=BATCH, evaluation={"auc": 0.5}, promote=False)
    return Built(store, model, changed, v1, v2, current_after_v1, store.current_version("tiny"))


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 3, SIZE, SIZE)).astype(np.float32)


def torch_logits(model: nn.Module, pixels: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(pixels)).numpy()


@pytest.mark.parametrize("n", [1, 3, 17])
def test_onnx_runtime_matches_torch_at_any_batch_size(built: Built, n: int) -> None:
    # Given the exported artifact in a plain ONNX Runtime session (no splitting: 17 is above the batch max of 4)
    artifact = built.store.path("tiny", 1) / built.v1.artifact
    session = onnxruntime.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
    pixels = images(n, seed=n)

    # When n images run through it, then it gives n logits within TOLERANCE of torch's
    (logits,) = session.run([built.v1.outputs.fake_logit], {built.v1.input_name: pixels})
    assert logits.reshape(-1).shape == (n,)
    np.testing.assert_allclose(logits.reshape(-1), torch_logits(built.model, pixels), rtol=0, atol=TOLERANCE)


def test_builds_store_v1_then_v2_and_promote_only_when_asked(built: Built) -> None:
    # v1 was built with promote (the default), v2 with promote=False
    assert (built.v1.version, built.v2.version) == (1, 2)
    assert built.store.versions("tiny") == [1, 2]
    assert built.current_after_v1 == 1 and built.current_after_v2 == 1
    assert EngineManifest.read(built.store.path("tiny", 2)) == built.v2


def test_the_manifest_records_what_the_engine_depends_on(built: Built) -> None:
    # Given the stored manifest of v1
    manifest = EngineManifest.read(built.store.path("tiny", 1))

    # Then the pixel contract is the recipe's, field for field, and the recipe is identified by name and hash
    assert manifest.input == RECIPE.input
    assert manifest.input.model_dump() == load_recipe("demo-tiny").input.model_dump()
    assert (manifest.recipe, manifest.recipe_sha256, manifest.detector) == (RECIPE.name, RECIPE.sha256, "siglip_binary")
    assert manifest.task == RECIPE.task
    # the backend, its version, precision and opset, and the batch range it was built for
    assert (manifest.backend.name, manifest.backend.version) == ("onnxruntime", onnxruntime.__version__)
    assert (manifest.backend.precision, manifest.backend.onnx_opset) == ("fp32", ONNX_OPSET)
    assert manifest.batch == BATCH
    # the operating point and the measured parity
    assert manifest.threshold == 0.7 and manifest.calibration.temperature == 2.0
    assert 0.0 <= manifest.evaluation["parity_max_abs_logit"] <= FP32_PARITY_TOLERANCE
    assert manifest.evaluation["parity_allowed_logit"] == FP32_PARITY_TOLERANCE
    assert manifest.evaluation["parity_precision"] == "fp32" and manifest.evaluation["parity_device"] == "cpu"
    assert built.v2.evaluation["auc"] == 0.5


def test_the_artifact_hash_matches_the_stored_file(built: Built) -> None:
    for manifest in (built.v1, built.v2):
        folder = built.store.path("tiny", manifest.version)
        assert sorted(p.name for p in folder.iterdir()) == sorted([manifest.artifact, MANIFEST_FILE])
        assert manifest.artifact_sha256 == sha256_file(folder / manifest.artifact)
    assert built.v1.artifact_sha256 != built.v2.artifact_sha256


def test_the_weights_hash_follows_the_weights_not_the_object(built: Built) -> None:
    # Given a freshly built detector loaded with v1's weights, then it hashes like v1
    torch.manual_seed(123)
    twin = build_detector(RECIPE)
    assert weights_sha256(twin) != built.v1.weights_sha256
    twin.load_state_dict(built.model.state_dict())
    assert weights_sha256(twin) == built.v1.weights_sha256
    # and one changed weight (v2) changes it
    assert built.v2.weights_sha256 != built.v1.weights_sha256


def copy_engine(built: Built, version: int, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built.store.path("tiny", version), tmp_path / f"v{version}"))


def test_a_tampered_artifact_is_refused(built: Built, tmp_path: Path) -> None:
    # Given a copy of v1 whose artifact lost one byte at the end
    folder = copy_engine(built, 1, tmp_path)
    artifact = folder / built.v1.artifact
    artifact.write_bytes(artifact.read_bytes()[:-1])

    # When it is loaded, then the hash check refuses it
    with pytest.raises(EngineError, match="does not match the sha256"):
        load_engine(folder)


def test_a_swapped_artifact_is_refused(built: Built, tmp_path: Path) -> None:
    # Given v1's manifest beside v2's (valid) artifact, then the mismatch is caught
    folder = copy_engine(built, 1, tmp_path)
    shutil.copyfile(built.store.path("tiny", 2) / built.v2.artifact, folder / built.v1.artifact)
    with pytest.raises(EngineError):
        load_engine(folder)


@pytest.mark.parametrize("damage", ["no manifest", "bad manifest", "no artifact", "unknown backend"])
def test_an_engine_folder_that_cannot_be_loaded_raises_engine_error(built: Built, tmp_path: Path, damage: str) -> None:
    folder = copy_engine(built, 1, tmp_path)
    if damage == "no manifest":
        (folder / MANIFEST_FILE).unlink()
    elif damage == "bad manifest":
        (folder / MANIFEST_FILE).write_text('{"name": "tiny"}')
    elif damage == "no artifact":
        (folder / built.v1.artifact).unlink()
    else:
        backend = built.v1.backend.model_copy(update={"name": "tensorrt-from-the-future"})
        built.v1.model_copy(update={"backend": backend}).write(folder)
    with pytest.raises(EngineError):
        load_engine(folder)


class RecordingBackend:
    """Wraps a backend and records the batch sizes it is asked to run."""

    def __init__(self, inner: object) -> None:
        self.inner, self.sizes = inner, []

    def run(self, pixels: np.ndarray, outputs: list[str]) -> dict[str, np.ndarray]:
        self.sizes.append(len(pixels))
        return self.inner.run(pixels, outputs)


def test_more_images_than_the_batch_max_are_split_and_give_the_same_logits(built: Built) -> None:
    # Given v1 loaded from the store (batch max 4), with its backend wrapped to record the calls
    engine = load_engine(built.store.resolve("tiny"), threads=1)
    recorder = RecordingBackend(engine.backend)
    engine = LoadedEngine(manifest=engine.manifest, backend=recorder, path=engine.path)
    pixels = images(17, seed=5)

    # When 17 images are scored at once
    together = engine.logits(pixels)

    # Then the backend saw chunks of at most 4, in order, and the logits equal one-by-one scoring and torch
    assert recorder.sizes == [4, 4, 4, 4, 1]
    one_by_one = np.concatenate([engine.logits(pixels[i : i + 1]) for i in range(17)])
    np.testing.assert_allclose(together, one_by_one, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(together, torch_logits(built.model, pixels), rtol=0, atol=TOLERANCE)
    # and p_fake applies the manifest's calibration (temperature 2) to each logit
    np.testing.assert_allclose(engine.p_fake(pixels), 1 / (1 + np.exp(-together.astype(np.float64) / 2)), atol=1e-6)


def test_the_engine_refuses_pixels_of_the_wrong_shape_and_accepts_none(built: Built) -> None:
    engine = load_engine(built.store.resolve("tiny"))
    with pytest.raises(ValueError, match=f"N×3×{SIZE}×{SIZE}"):
        engine.logits(images(2)[:, :, :-1])
    with pytest.raises(ValueError):
        engine.logits(images(2)[0])
    assert engine.logits(np.zeros((0, 3, SIZE, SIZE), np.float32)).shape == (0,)


def outputs_of(model: nn.Module, pixels: torch.Tensor) -> dict[str, np.ndarray]:
    with torch.no_grad():
        return {"logit": model.eval()(pixels).numpy()}


def test_a_candidate_whose_weights_changed_after_export_is_refused(built: Built) -> None:
    # Given v1's artifact run by its backend on the golden batch, and the detector with one bias moved by 2e-3
    # (twice the fp32 tolerance) after that export
    golden = golden_batch(SIZE)
    candidate = load_engine(built.store.path("tiny", 1)).backend.run(golden.numpy(), ["logit"])
    moved = copy.deepcopy(built.model)
    with torch.no_grad():
        moved.head.mlp[-1].bias += 2e-3

    # When the artifact is checked against the moved detector, then it is refused with the figures
    with pytest.raises(EngineError, match=r"logit max \|Δ\| 2\.0\d*e-03 > allowed 1\.000e-03"):
        check_parity(outputs_of(moved, golden), candidate, "fp32", "the artifact")
    # and against the detector it was exported from it passes
    assert check_parity(outputs_of(built.model, golden), candidate, "fp32").max_abs["logit"] < 1e-5


REFERENCE = {"logit": np.array([1.0, -1.0, 0.5], np.float32), "class_logits": np.ones((3, 4), np.float32)}


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("nan", "logit has 1 non-finite values"),
        ("inf", "class_logits has 1 non-finite values"),
        ("missing", r"class_logits has shape None"),
        ("shape", r"logit has shape \(2,\), not \(3,\)"),
    ],
)
def test_a_candidate_with_nan_or_missing_outputs_is_refused(damage: str, message: str) -> None:
    # Given a candidate equal to the reference but for one damage
    candidate = {name: a.copy() for name, a in REFERENCE.items()}
    if damage == "nan":
        candidate["logit"][1] = np.nan
    elif damage == "inf":
        candidate["class_logits"][2, 3] = np.inf
    elif damage == "missing":
        del candidate["class_logits"]
    else:
        candidate["logit"] = candidate["logit"][:2]

    # When parity is checked at the loosest precision, then it is still refused, naming what is wrong
    with pytest.raises(EngineError, match=message):
        check_parity(REFERENCE, candidate, "int8")


def test_a_nan_reference_is_refused() -> None:
    # A detector that gives NaN on the golden batch is broken whatever its artifact says
    reference = {"logit": np.array([np.nan, 0.0], np.float32)}
    with pytest.raises(EngineError, match="logit max"):
        check_parity(reference, {"logit": np.zeros(2, np.float32)}, "fp32")


@pytest.mark.parametrize(("precision", "accepted"), [("fp32", False), ("fp16", False), ("bf16", True), ("int8", True)])
def test_the_tolerance_follows_the_precision_and_the_logit_scale(precision: str, accepted: bool) -> None:
    # Given logits of scale 2 and a candidate off by 0.05 on one of them
    reference = {"logit": np.array([2.0, -1.0, 0.0], np.float32)}
    candidate = {"logit": reference["logit"] + np.array([0.0, 0.05, 0.0], np.float32)}

    # Then fp32 (1e-3) and fp16 (0.01 + 0.01×2) refuse it, bf16 (0.05 + 0.05×2) and int8 accept it
    allowed = PARITY_TOLERANCES[precision].absolute + PARITY_TOLERANCES[precision].relative * 2.0
    if accepted:
        parity = check_parity(reference, candidate, precision)
        assert parity.max_abs["logit"] == pytest.approx(0.05) and parity.allowed["logit"] == pytest.approx(allowed)
    else:
        with pytest.raises(EngineError, match=f"at {precision}"):
            check_parity(reference, candidate, precision)


class ExportDiffers(nn.Module):
    """A tiny detector that is honest in eager torch but adds ``offset`` while ``torch.export`` traces it.

    This is a real export/eager discrepancy (the same kind a model hits when a branch depends on tracing state),
    so the parity check is exercised end to end — export, the backend, comparison — with nothing patched.
    """

    def __init__(self, offset: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.offset = offset

    def outputs(self, pixels: torch.Tensor) -> DetectorOutput:
        logits = pixels.mean(dim=(1, 2, 3)) * self.scale
        return DetectorOutput(fake_logit=logits + self.offset if torch.compiler.is_exporting() else logits)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.outputs(pixels).fake_logit


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
@pytest.mark.parametrize("offset", [0.01, float("nan")], ids=["off-by-0.01", "nan"])
def test_an_export_that_disagrees_with_torch_is_refused(tmp_path: Path, offset: float, backend: str) -> None:
    # Given a model whose traced graph differs from its eager output by 0.01 (10× the tolerance), or is NaN
    store = EngineStore(tmp_path / "engines")

    # When it is built, then the build is refused and nothing is stored or promoted
    with pytest.raises(EngineError, match="differs from torch"):
        build_engine(ExportDiffers(offset), RECIPE, store, "bad", backend=backend, batch=BATCH)
    assert store.versions("bad") == [] and store.current_version("bad") is None


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_an_export_within_tolerance_is_accepted(tmp_path: Path, backend: str) -> None:
    # The control for the test above: the same model with no offset builds and reports a parity of ~0
    store = EngineStore(tmp_path / "engines")
    manifest = build_engine(ExportDiffers(0.0), RECIPE, store, "good", backend=backend, batch=BATCH)
    assert manifest.version == 1 and manifest.evaluation["parity_max_abs_logit"] < 1e-6
    assert manifest.backend.name == backend


@pytest.mark.parametrize(
    ("backend", "precision"), [("onnxruntime", "bf16"), ("torch", "int8"), ("tensorrt-from-the-future", "fp32")]
)
def test_a_backend_or_precision_that_cannot_be_built_is_refused(tmp_path: Path, backend: str, precision: str) -> None:
    store = EngineStore(tmp_path / "engines")
    with pytest.raises(EngineError, match=r"cannot build|builds"):
        build_engine(ExportDiffers(0.0), RECIPE, store, "x", backend=backend, precision=precision, batch=BATCH)
    assert store.versions("x") == []


@dataclass
class PlanCall:
    onnx_outputs: list[str]
    batch: BatchRange
    image_size: int
    precision: str
    timing_cache: Path | None


@pytest.fixture
def fake_build_plan(monkeypatch: pytest.MonkeyPatch) -> list[PlanCall]:
    """``build_plan`` replaced by a stand-in (no TensorRT here) that reads the ONNX it is given, records the call
    and writes a plan file."""
    import onnx

    from deepsift.trainer import tensorrt_build

    calls: list[PlanCall] = []

    def build_plan(
        onnx_path: Path, plan_path: Path, batch: BatchRange, image_size: int, precision: str, timing_cache: Path | None
    ) -> tensorrt_build.TensorRtBuildInfo:
        outputs = [o.name for o in onnx.load(str(onnx_path)).graph.output]
        calls.append(PlanCall(outputs, batch, image_size, precision, timing_cache))
        plan_path.write_bytes(b"a plan")
        return tensorrt_build.TensorRtBuildInfo(version="10.9.0.34", compute_capability="9.0")

    monkeypatch.setattr(tensorrt_build, "build_plan", build_plan)
    return calls


def test_a_tensorrt_build_hands_the_onnx_export_to_build_plan_and_records_its_version(
    tmp_path: Path, fake_build_plan: list[PlanCall], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given build_plan faked, and the plan's outputs on the golden batch faked as the detector's own (the TensorRT
    # backend cannot run here)
    import deepsift.trainer.build

    model = ExportDiffers(0.0)
    monkeypatch.setattr(
        deepsift.trainer.build,
        "candidate_outputs",
        lambda manifest, artifact, golden, device: outputs_of(model, golden),
    )
    store = EngineStore(tmp_path / "engines")

    # When an fp16 TensorRT engine is built
    cache = tmp_path / "timing.cache"
    manifest = build_engine(
        model, RECIPE, store, "trt", backend="tensorrt", precision="fp16", batch=BATCH, timing_cache=cache
    )

    # Then build_plan got the ONNX export with its outputs, the batch range, size, precision and timing cache
    assert fake_build_plan == [PlanCall(["logit"], BATCH, SIZE, "fp16", cache)]
    # and the manifest records the plan, its TensorRT version and compute capability, and the fp16 parity
    assert (manifest.artifact, manifest.artifact_sha256) == (
        "model.plan",
        sha256_file(store.path("trt", 1) / "model.plan"),
    )
    assert (manifest.backend.name, manifest.backend.version, manifest.backend.gpu_compute_capability) == (
        "tensorrt",
        "10.9.0.34",
        "9.0",
    )
    assert (manifest.backend.precision, manifest.backend.onnx_opset) == ("fp16", ONNX_OPSET)
    assert manifest.evaluation["parity_precision"] == "fp16"
    assert manifest.evaluation["parity_device"] == ("cuda" if torch.cuda.is_available() else "cpu")


def test_a_tensorrt_plan_that_cannot_be_checked_is_not_stored(tmp_path: Path, fake_build_plan: list[PlanCall]) -> None:
    # Given a plan built (faked), but no TensorRT to run it for the parity check
    store = EngineStore(tmp_path / "engines")

    # When the build checks parity through the TensorRT backend, then it is refused and nothing is stored
    with pytest.raises(EngineError, match="TensorRT"):
        build_engine(ExportDiffers(0.0), RECIPE, store, "trt", backend="tensorrt", batch=BATCH)
    assert len(fake_build_plan) == 1 and store.versions("trt") == []


def test_a_detector_with_activation_checkpointing_exports_and_keeps_its_setting(tmp_path: Path) -> None:
    # Given the demo detector with activation checkpointing on (which its blocks apply even in eval mode)
    recipe = load_recipe("demo-tiny", backbone={**RECIPE.backbone.model_dump(), "grad_checkpointing": True})
    torch.manual_seed(0)
    model = build_detector(recipe)
    assert model.tower.transformer.grad_checkpointing

    # When it is built, then the export traces through and matches torch
    manifest = build_engine(model, recipe, EngineStore(tmp_path / "engines"), "checkpointed", batch=BATCH)
    assert manifest.evaluation["parity_max_abs_logit"] < 1e-5
    # and the detector is left checkpointing, as it was, for further training
    assert model.tower.transformer.grad_checkpointing
