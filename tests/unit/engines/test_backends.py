"""The torch backend on CPU, with a small exported program of three outputs (fake logit, class logits, mask):
loading through ``load_engine``, fp32 and bf16, numpy and torch input, and the artifacts it refuses.

Every shipped tiny recipe through the torch backend, against ONNX Runtime: tests/unit/trainer/test_export_recipes.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from deepsift.engines.backends import BACKENDS, BackendOptions, load_engine
from deepsift.engines.backends.torch_backend import TorchBackend, save_pt2
from deepsift.engines.errors import EngineError
from deepsift.engines.manifest import BackendSpec, BatchRange, EngineManifest, OutputSpec, sha256_file
from deepsift.engines.recipes import TaskSpec, load_recipe

INPUT = load_recipe("demo-tiny").input.model_copy(update={"size": 16})
SIZE = INPUT.size
OUTPUTS = OutputSpec(fake_logit="logit", class_logits="class_logits", mask_logits="mask_logits")
TASK = TaskSpec(kind="multiclass", class_names=("real", "swap", "edit"), masks=True)


class ToyDetector(nn.Module):
    """pixels → (fake logit N, class logits N×3, mask logits N×1×S×S), with the ``.float()`` the real detectors
    use for their fake logit (which the traced graph records as a float32 check)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mask = nn.Conv2d(3, 1, 3, padding=1)
        self.classes = nn.Sequential(nn.Linear(3 * SIZE * SIZE, 32), nn.GELU(), nn.Linear(32, 3))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        class_logits = self.classes(pixels.flatten(1))
        logit = torch.logsumexp(class_logits[:, 1:].float(), dim=1) - class_logits[:, 0].float()
        return logit, class_logits, self.mask(pixels)


def manifest_for(artifact: Path, precision: str = "fp32", outputs: OutputSpec = OUTPUTS) -> EngineManifest:
    return EngineManifest(
        name="toy",
        recipe="toy",
        recipe_sha256="0" * 64,
        detector="toy",
        task=TASK,
        input=INPUT,
        backend=BackendSpec(name="torch", version=torch.__version__, precision=precision),
        batch=BatchRange(min=1, opt=2, max=4),
        outputs=outputs,
        artifact=artifact.name,
        artifact_sha256=sha256_file(artifact),
        weights_sha256="0" * 64,
    )


@pytest.fixture(scope="module")
def toy() -> ToyDetector:
    return ToyDetector().eval()


@pytest.fixture(scope="module")
def engine_folder(toy: ToyDetector, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An engine folder: the toy detector exported with a dynamic batch as ``model.pt2``, and its manifest."""
    folder = tmp_path_factory.mktemp("torch-engine")
    batch = torch.export.Dim("batch", min=1, max=4)
    program = torch.export.export(toy, (torch.zeros(2, 3, SIZE, SIZE),), dynamic_shapes=({0: batch},))
    artifact = save_pt2(program, folder / "model.pt2", "pixels", OUTPUTS.names())
    manifest_for(artifact).write(folder)
    return folder


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 3, SIZE, SIZE)).astype(np.float32)


def eager(toy: ToyDetector, pixels: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.numpy() for t in toy(torch.from_numpy(pixels))]


def copy_with_precision(engine_folder: Path, tmp_path: Path, precision: str) -> Path:
    folder = Path(shutil.copytree(engine_folder, tmp_path / precision))
    manifest_for(folder / "model.pt2", precision=precision).write(folder)
    return folder


def test_torch_is_a_registered_backend() -> None:
    assert BACKENDS.get("torch") is TorchBackend


def test_an_engine_with_a_pt2_artifact_loads_and_gives_every_output(toy: ToyDetector, engine_folder: Path) -> None:
    # Given the toy engine loaded through load_engine (hash checked)
    engine = load_engine(engine_folder)

    # When 6 images (more than the batch max of 4) run with masks
    pixels = images(6)
    out = engine.run(pixels, masks=True)

    # Then every output equals the eager module's, as float32, with masks as N×S×S
    logit, class_logits, mask = eager(toy, pixels)
    assert out.fake_logit.dtype == out.class_logits.dtype == out.mask_logits.dtype == np.float32
    np.testing.assert_allclose(out.fake_logit, logit, rtol=0, atol=1e-5)
    np.testing.assert_allclose(out.class_logits, class_logits, rtol=0, atol=1e-5)
    np.testing.assert_allclose(out.mask_logits, mask[:, 0], rtol=0, atol=1e-5)
    # and without masks asked for, none are computed into the result
    assert engine.run(pixels).mask_logits is None


def test_bf16_runs_under_autocast_and_still_returns_float32(
    toy: ToyDetector, engine_folder: Path, tmp_path: Path
) -> None:
    # Given the same artifact with a bf16 manifest
    engine = load_engine(copy_with_precision(engine_folder, tmp_path, "bf16"))

    # When images run through it
    pixels = images(3, seed=1)
    out = engine.run(pixels, masks=True)

    # Then the outputs are float32 arrays close to fp32 (bf16 keeps 8 significant bits: 5e-2 + 5% of the logit
    # range, the build's bf16 parity rule) but not equal to them: the matmuls really ran in bf16
    for got, want in zip((out.fake_logit, out.class_logits, out.mask_logits[:, None]), eager(toy, pixels), strict=True):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=0, atol=5e-2 + 5e-2 * np.abs(want).max())
        assert np.abs(got - want).max() > 0


def test_a_torch_tensor_already_on_the_device_is_handed_over_without_a_copy(engine_folder: Path) -> None:
    # Given the backend with its module wrapped to record the storage of what it receives
    engine = load_engine(engine_folder)
    backend = engine.backend
    received: list[int] = []
    module = backend.module

    def recording(pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        received.append(pixels.data_ptr())
        return module(pixels)

    backend.module = recording
    pixels = torch.from_numpy(images(2, seed=2))

    # When a float32 tensor on the backend's device (the CPU here) is run
    found = backend.run(pixels, ["logit", "class_logits"])

    # Then the module saw that very storage, and the results are numpy arrays equal to numpy input's
    assert received == [pixels.data_ptr()]
    expected = backend.run(pixels.numpy(), ["logit", "class_logits"])
    assert sorted(found) == ["class_logits", "logit"]
    for name in found:
        assert isinstance(found[name], np.ndarray)
        np.testing.assert_array_equal(found[name], expected[name])


def test_an_archive_whose_outputs_differ_from_the_manifest_is_refused(engine_folder: Path, tmp_path: Path) -> None:
    # Given the archive beside a manifest that names the class logits "classes"
    folder = Path(shutil.copytree(engine_folder, tmp_path / "renamed"))
    renamed = OUTPUTS.model_copy(update={"class_logits": "classes"})
    manifest_for(folder / "model.pt2", outputs=renamed).write(folder)

    # When it is loaded, then the names are checked and it is refused
    with pytest.raises(EngineError, match="classes"):
        load_engine(folder)


def test_a_file_that_is_not_an_exported_program_is_refused(tmp_path: Path) -> None:
    # Given a manifest whose (hash-matching) artifact is not a torch.export archive
    artifact = tmp_path / "model.pt2"
    artifact.write_bytes(b"not a zip archive")
    manifest_for(artifact).write(tmp_path)

    # When it is loaded, then it is refused as an engine error, not a stray exception
    with pytest.raises(EngineError, match="torch cannot load"):
        load_engine(tmp_path)


def test_a_tampered_archive_is_refused_by_its_hash(engine_folder: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(engine_folder, tmp_path / "tampered"))
    artifact = folder / "model.pt2"
    artifact.write_bytes(artifact.read_bytes()[:-1])
    with pytest.raises(EngineError, match="does not match the sha256"):
        load_engine(folder)


def test_int8_is_refused(engine_folder: Path) -> None:
    manifest = manifest_for(engine_folder / "model.pt2", precision="int8")
    with pytest.raises(EngineError, match="not int8"):
        TorchBackend(manifest, engine_folder / "model.pt2", BackendOptions())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_a_cuda_device_without_cuda_is_refused(engine_folder: Path) -> None:
    with pytest.raises(EngineError, match="no CUDA device"):
        load_engine(engine_folder, options=BackendOptions(device="cuda"))
