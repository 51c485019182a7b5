"""Build an engine from a trained detector: export, check parity, write the manifest, store, promote."""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnxruntime
from torch import nn

from engines.errors import EngineError
from engines.manifest import BackendSpec, BatchRange, Calibration, EngineManifest, OutputSpec, sha256_file
from engines.recipes import Recipe
from engines.store import EngineStore
from trainer.export import (
    INPUT_NAME,
    ONNX_OPSET,
    OUTPUT_NAME,
    export_onnx,
    golden_batch,
    max_abs_difference,
    weights_sha256,
)

FP32_PARITY_TOLERANCE = 1e-3
ARTIFACT = "model.onnx"


def build_onnx_engine(
    model: nn.Module,
    recipe: Recipe,
    store: EngineStore,
    name: str,
    *,
    threshold: float = 0.5,
    calibration: Calibration | None = None,
    evaluation: dict[str, float | int | str] | None = None,
    batch: BatchRange | None = None,
    promote: bool = True,
) -> EngineManifest:
    """Export ``model`` to an ONNX Runtime engine named ``name``; refuse it if ONNX and torch disagree."""
    batch = batch or BatchRange(min=1, opt=32, max=64)
    with tempfile.TemporaryDirectory(prefix="deepsift-build-") as tmp:
        artifact = export_onnx(model, recipe.input.size, Path(tmp) / ARTIFACT, batch)
        parity = max_abs_difference(model, artifact, golden_batch(recipe.input.size))
        if not parity <= FP32_PARITY_TOLERANCE:  # also refuses NaN, which compares False with anything
            raise EngineError(f"ONNX export differs from torch by {parity:.2e} > {FP32_PARITY_TOLERANCE:.0e}")
        manifest = EngineManifest(
            name=name,
            recipe=recipe.name,
            recipe_sha256=recipe.sha256,
            detector=recipe.detector,
            task=recipe.task,
            input=recipe.input,
            backend=BackendSpec(
                name="onnxruntime", version=onnxruntime.__version__, precision="fp32", onnx_opset=ONNX_OPSET
            ),
            batch=batch,
            input_name=INPUT_NAME,
            outputs=OutputSpec(fake_logit=OUTPUT_NAME),
            artifact=ARTIFACT,
            artifact_sha256=sha256_file(artifact),
            weights_sha256=weights_sha256(model),
            calibration=calibration or Calibration(),
            threshold=threshold,
            evaluation={**(evaluation or {}), "onnx_parity_max_abs": parity},
        )
        stored = store.add(manifest, artifact)
    if promote:
        store.promote(name, stored.version)
    return stored
