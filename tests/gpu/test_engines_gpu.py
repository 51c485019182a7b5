"""The GPU engines against the portable CPU engine on the same tensors: torch-CUDA at fp16 and bf16 (and
TensorRT fp16 where it is installed) must give ONNX Runtime's outputs within the precision's parity tolerance
(trainer.build.PARITY_TOLERANCES: fp16 1e-2 + 1 % of the logit range, bf16 5e-2 + 5 %)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deepsift.engines.backends import BackendOptions, load_engine
from deepsift.engines.models import build_detector
from deepsift.engines.recipes import load_recipe
from deepsift.engines.store import EngineStore
from deepsift.trainer.build import build_engine, check_parity

RECIPES = ["demo-tiny", "tiny-multitask", "tiny-fusion", "tiny-sd2", "tiny-fewshot"]


def built(store: EngineStore, recipe_name: str, backend: str, precision: str) -> Path:
    recipe = load_recipe(recipe_name)
    torch.manual_seed(0)
    name = f"{recipe_name}-{backend}-{precision}"
    manifest = build_engine(build_detector(recipe), recipe, store, name, backend=backend, precision=precision)
    return store.resolve(name, manifest.version)


def outputs(engine, pixels) -> dict[str, np.ndarray]:
    found = engine.run(pixels, masks=True)
    spec = engine.manifest.outputs
    named = {
        spec.fake_logit: found.fake_logit,
        spec.class_logits: found.class_logits,
        spec.mask_logits: found.mask_logits,
    }
    return {k: v for k, v in named.items() if k is not None and v is not None}


@pytest.mark.parametrize("recipe_name", RECIPES)
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_torch_cuda_engine_matches_onnxruntime(tmp_path: Path, recipe_name: str, precision: str) -> None:
    # Given the same detector built for ONNX Runtime (CPU, fp32) and for torch on CUDA at reduced precision
    store = EngineStore(tmp_path)
    cpu = load_engine(built(store, recipe_name, "onnxruntime", "fp32"))
    gpu = load_engine(built(store, recipe_name, "torch", precision), options=BackendOptions(device="cuda"))
    size = cpu.manifest.input.size
    pixels = np.random.default_rng(1).uniform(-1, 1, (16, 3, size, size)).astype(np.float32)
    # When both score the batch (the GPU engine from a CUDA tensor: the zero-copy hand-off)
    expected = outputs(cpu, pixels)
    actual = outputs(gpu, torch.from_numpy(pixels).cuda())
    # Then every output agrees within the precision's tolerance
    check_parity(expected, actual, precision, what=f"torch-cuda {precision}")


def test_tensorrt_fp16_engine_matches_onnxruntime(tmp_path: Path) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT is not installed on this GPU machine")
    store = EngineStore(tmp_path)
    cpu = load_engine(built(store, "tiny-multitask", "onnxruntime", "fp32"))
    trt = load_engine(built(store, "tiny-multitask", "tensorrt", "fp16"), options=BackendOptions(device="cuda"))
    assert trt.manifest.backend.gpu_compute_capability == "{}.{}".format(*torch.cuda.get_device_capability())
    pixels = np.random.default_rng(2).uniform(-1, 1, (16, 3, 64, 64)).astype(np.float32)
    check_parity(outputs(cpu, pixels), outputs(trt, torch.from_numpy(pixels).cuda()), "fp16", what="tensorrt fp16")
