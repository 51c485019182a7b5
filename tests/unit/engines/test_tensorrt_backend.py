"""The TensorRT backend without TensorRT: registration, the plan compatibility check, dtype mapping, input
placement, and the operator-facing error on a machine that cannot run a plan. The runtime itself (deserialise,
execute) needs an NVIDIA GPU with TensorRT and is not exercised here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deepsift.engines.backends import BACKENDS, load_engine
from deepsift.engines.backends.tensorrt import (
    check_plan_compatible,
    compute_capability_string,
    device_input,
    require_tensorrt,
    torch_dtype,
)
from deepsift.engines.errors import EngineError
from deepsift.engines.manifest import BackendSpec, EngineManifest, sha256_file
from deepsift.engines.recipes import load_recipe

ROOT = Path(__file__).resolve().parents[3]
BUILT_WITH, BUILT_FOR = "10.3.0", "9.0"


def plan_manifest(artifact: Path | None = None, **backend: object) -> EngineManifest:
    recipe = load_recipe("demo-tiny")
    spec = {"name": "tensorrt", "version": BUILT_WITH, "precision": "fp16", "gpu_compute_capability": BUILT_FOR}
    return EngineManifest(
        name="tiny-trt",
        recipe=recipe.name,
        recipe_sha256=recipe.sha256,
        detector=recipe.detector,
        task=recipe.task,
        input=recipe.input,
        backend=BackendSpec(**(spec | backend)),
        artifact="model.plan",
        artifact_sha256=sha256_file(artifact) if artifact else "ab" * 32,
        weights_sha256="cd" * 32,
    )


def test_importing_the_backends_registers_tensorrt_without_importing_it() -> None:
    # Given a fresh interpreter, when it imports the backend registry, then "tensorrt" is registered and the
    # tensorrt package was not imported (it loads inside the loader only)
    code = "import sys, engines.backends as b; print('tensorrt' in b.BACKENDS, 'tensorrt' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]
    assert "tensorrt" in BACKENDS


def test_a_plan_built_here_for_this_gpu_passes_the_check() -> None:
    check_plan_compatible(plan_manifest(), tensorrt_version=BUILT_WITH, compute_capability=BUILT_FOR)


@pytest.mark.parametrize(
    ("backend", "tensorrt_version", "capability", "expected"),
    [
        ({}, BUILT_WITH, "8.9", r"built for GPU compute capability 9\.0, but this GPU has 8\.9; run `trainer rebuild"),
        ({}, "10.5.0", BUILT_FOR, r"built with TensorRT 10\.3\.0, but TensorRT 10\.5\.0 .*trainer rebuild-engine"),
        ({"gpu_compute_capability": None}, BUILT_WITH, BUILT_FOR, r"records no GPU compute capability.*rebuild-engine"),
        ({}, None, BUILT_FOR, r"TensorRT is not installed.*`gpu` extra.*onnxruntime or torch engine"),
        ({}, BUILT_WITH, None, r"needs an NVIDIA GPU; none is visible"),
    ],
    ids=["other-gpu", "other-tensorrt", "no-capability-recorded", "no-tensorrt", "no-gpu"],
)
def test_a_plan_this_machine_cannot_run_is_refused_with_what_to_do(
    backend: dict[str, object], tensorrt_version: str | None, capability: str | None, expected: str
) -> None:
    with pytest.raises(EngineError, match=expected):
        check_plan_compatible(plan_manifest(**backend), tensorrt_version, capability)


def test_loading_a_tensorrt_engine_without_tensorrt_is_an_engine_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a stored TensorRT engine (artifact and manifest) on a machine where `import tensorrt` fails
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    artifact = tmp_path / "model.plan"
    artifact.write_bytes(b"a plan from another machine")
    plan_manifest(artifact).write(tmp_path)

    # When it is loaded, then the operator gets an EngineError saying what to install or build, not an ImportError
    with pytest.raises(EngineError, match=r"TensorRT is not installed.*deepsift\[gpu\]"):
        load_engine(tmp_path)


def test_require_tensorrt_turns_the_import_error_into_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(EngineError, match=r"`gpu` extra.*NVIDIA GPU") as caught:
        require_tensorrt()
    assert isinstance(caught.value.__cause__, ImportError)


@pytest.mark.parametrize(("capability", "expected"), [((9, 0), "9.0"), ((8, 6), "8.6"), ((12, 0), "12.0")])
def test_compute_capability_is_written_major_dot_minor(capability: tuple[int, int], expected: str) -> None:
    assert compute_capability_string(capability) == expected


def test_engine_tensor_types_map_to_torch_and_unknown_ones_are_refused() -> None:
    assert [torch_dtype(n) for n in ("FLOAT", "HALF", "BF16")] == [torch.float32, torch.float16, torch.bfloat16]
    with pytest.raises(EngineError, match="FP8"):
        torch_dtype("FP8")


def test_a_contiguous_tensor_of_the_engine_dtype_on_its_device_is_used_without_a_copy() -> None:
    pixels = torch.rand(2, 3, 8, 8)
    assert device_input(pixels, torch.device("cpu"), torch.float32) is pixels


def test_other_inputs_are_copied_to_a_contiguous_tensor_of_the_engine_dtype() -> None:
    # Given a numpy float64 batch and a non-contiguous torch view
    array = np.random.default_rng(0).uniform(-1, 1, (2, 3, 8, 8))
    view = torch.rand(2, 8, 8, 3).permute(0, 3, 1, 2)

    # When each is placed for an fp32 and an fp16 engine input
    from_numpy = device_input(array, torch.device("cpu"), torch.float32)
    from_view = device_input(view, torch.device("cpu"), torch.float16)

    # Then both are contiguous, of the engine's dtype, and hold the same values
    assert from_numpy.dtype == torch.float32 and from_numpy.is_contiguous()
    np.testing.assert_allclose(from_numpy.numpy(), array, rtol=1e-6)
    assert from_view.dtype == torch.float16 and from_view.is_contiguous()
    torch.testing.assert_close(from_view.float(), view, atol=1e-3, rtol=1e-3)


def test_a_plan_runs_on_the_daemons_cuda_device_when_it_names_one() -> None:
    from deepsift.engines.backends.tensorrt import cuda_device

    assert cuda_device("cuda:1") == torch.device("cuda", 1)
    assert cuda_device("cuda").type == "cuda" and cuda_device("cpu").type == "cuda"
