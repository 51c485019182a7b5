"""Build an engine from a trained detector: trace, export ONNX, build the backend's artifact (by its entry in
``trainer.artifacts.BACKEND_BUILDS``), check its parity with torch, write the manifest, store, promote.

ONNX is always exported: it is the TensorRT input, and it proves the detector has a portable form. The parity gate
compares every output of the artifact, run by the backend that will serve it, with eager torch fp32 on a fixed
golden batch, within a tolerance set by the engine's precision; a failure raises and stores nothing.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deepsift.engines.backends import BACKENDS, BackendOptions
from deepsift.engines.errors import EngineError
from deepsift.engines.manifest import BatchRange, Calibration, EngineManifest, sha256_file
from deepsift.engines.recipes import Recipe
from deepsift.engines.store import EngineStore
from deepsift.trainer.artifacts import BACKEND_BUILDS, ONNX_ARTIFACT, Exported
from deepsift.trainer.export import (
    INPUT_NAME,
    export_onnx,
    golden_batch,
    output_spec,
    reference_outputs,
    trace,
    weights_sha256,
)


@dataclass(frozen=True)
class Tolerance:
    """Largest |candidate − reference| allowed on one output: ``absolute + relative × max|reference|``.

    The relative part scales with the output's own logit range (SD²'s class logits are τ·cos, up to ~14; a tiny
    untrained head's logits are ~0.1), so a reduced precision is judged by its relative rounding error."""

    absolute: float
    relative: float

    def allowed(self, reference: np.ndarray) -> float:
        scale = float(np.max(np.abs(reference))) if reference.size else 0.0
        return self.absolute + self.relative * scale


# fp32: the same maths in other kernels (observed ≤ 2e-6 on every tiny recipe); 1e-3 absolute still catches a
#   changed weight or a wrong branch. fp16 keeps 11 significant bits (unit roundoff 4.9e-4); rounding compounds
#   through a ViT's blocks to ~1e-3..1e-2 relative at the logits, so 1% of the logit range plus 0.01 (at P = 0.5 a
#   logit error of 0.01 moves P(fake) by 0.0025). bf16 keeps 8 bits (unit roundoff 3.9e-3, 8× fp16's), hence 5%
#   plus 0.05 (≤ 0.0125 in P(fake)). int8: each tensor quantised to 1/127 of its range, hence 10% plus 0.1.
#   Masks are compared on their logits with the same rule.
PARITY_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(absolute=1e-3, relative=0.0),
    "fp16": Tolerance(absolute=1e-2, relative=1e-2),
    "bf16": Tolerance(absolute=5e-2, relative=5e-2),
    "int8": Tolerance(absolute=1e-1, relative=1e-1),
}
FP32_PARITY_TOLERANCE = PARITY_TOLERANCES["fp32"].absolute


@dataclass(frozen=True)
class Parity:
    """The parity figures of one candidate, by output name: the largest difference and what was allowed."""

    precision: str
    max_abs: dict[str, float]
    allowed: dict[str, float]

    def evaluation(self) -> dict[str, float | str]:
        """The figures as manifest ``evaluation`` entries."""
        figures: dict[str, float | str] = {"parity_precision": self.precision}
        for name in self.max_abs:
            figures[f"parity_max_abs_{name}"] = self.max_abs[name]
            figures[f"parity_allowed_{name}"] = self.allowed[name]
        return figures


def check_parity(
    reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], precision: str, what: str = "candidate"
) -> Parity:
    """Compare every reference output with the candidate's; raise ``EngineError`` with the figures if any output
    is missing, differs in shape, is not finite, or differs by more than the precision's tolerance."""
    tolerance = PARITY_TOLERANCES[precision]
    max_abs: dict[str, float] = {}
    allowed: dict[str, float] = {}
    failures: list[str] = []
    for name, expected in reference.items():
        actual = candidate.get(name)
        if actual is None or np.shape(actual) != expected.shape:
            failures.append(f"{name} has shape {None if actual is None else np.shape(actual)}, not {expected.shape}")
            continue
        max_abs[name] = float(np.max(np.abs(np.asarray(actual, np.float64) - expected), initial=0.0))
        allowed[name] = tolerance.allowed(expected)
        if not np.all(np.isfinite(actual)):
            failures.append(f"{name} has {int(np.sum(~np.isfinite(actual)))} non-finite values")
        elif not max_abs[name] <= allowed[name]:  # also refuses a NaN reference, which compares False
            failures.append(f"{name} max |Δ| {max_abs[name]:.3e} > allowed {allowed[name]:.3e}")
    if failures:
        rule = f"{tolerance.absolute:g} + {tolerance.relative:g}×max|reference|"
        raise EngineError(f"{what} differs from torch at {precision} ({rule}): " + "; ".join(failures))
    return Parity(precision, max_abs, allowed)


def candidate_outputs(
    manifest: EngineManifest, artifact: Path, golden: torch.Tensor, device: str = "cpu"
) -> dict[str, np.ndarray]:
    """What the built artifact gives on ``golden``, run by its own backend."""
    backend = BACKENDS.get(manifest.backend.name)(manifest, artifact, BackendOptions(device=device))
    return backend.run(golden.numpy(), manifest.outputs.names())


def build_engine(
    model: nn.Module,
    recipe: Recipe,
    store: EngineStore,
    name: str,
    *,
    backend: str = "onnxruntime",
    precision: str = "fp32",
    batch: BatchRange | None = None,
    threshold: float = 0.5,
    calibration: Calibration | None = None,
    evaluation: dict[str, float | int | str] | None = None,
    promote: bool = True,
    timing_cache: Path | None = None,
) -> EngineManifest:
    """Build ``model`` into a ``backend`` engine named ``name`` at ``precision``; refuse it (storing nothing) if its
    outputs disagree with torch beyond the precision's tolerance. ``timing_cache`` is TensorRT's."""
    if backend not in BACKEND_BUILDS:
        raise EngineError(f"cannot build backend {backend!r}; choose one of {', '.join(BACKEND_BUILDS)}")
    how = BACKEND_BUILDS.get(backend)
    if precision not in how.precisions:
        raise EngineError(f"backend {backend} builds {', '.join(how.precisions)} engines, not {precision}")
    device = "cuda" if how.gpu and torch.cuda.is_available() else "cpu"
    batch = batch or BatchRange(min=1, opt=32, max=64)
    spec = output_spec(recipe.task)
    golden = golden_batch(recipe.input.size, n=min(max(4, batch.min), batch.max))
    reference = reference_outputs(model, spec, golden)
    with tempfile.TemporaryDirectory(prefix="deepsift-build-") as tmp:
        program = trace(model, spec, recipe.input.size, batch)
        onnx = export_onnx(program, spec, Path(tmp) / ONNX_ARTIFACT)
        exported = Exported(program, spec, onnx, recipe.input.size, batch)
        artifact, backend_spec = how.artifact(exported, precision, timing_cache)
        manifest = EngineManifest(
            name=name,
            recipe=recipe.name,
            recipe_sha256=recipe.sha256,
            detector=recipe.detector,
            task=recipe.task,
            input=recipe.input,
            backend=backend_spec,
            batch=batch,
            input_name=INPUT_NAME,
            outputs=spec,
            artifact=artifact.name,
            artifact_sha256=sha256_file(artifact),
            weights_sha256=weights_sha256(model),
            calibration=calibration or Calibration(),
            threshold=threshold,
            evaluation=dict(evaluation or {}),
        )
        candidate = candidate_outputs(manifest, artifact, golden, device)
        parity = check_parity(reference, candidate, precision, f"{backend} engine on {device}")
        figures = {**parity.evaluation(), "parity_device": device}
        manifest = manifest.model_copy(update={"evaluation": {**manifest.evaluation, **figures}})
        stored = store.add(manifest, artifact)
    if promote:
        store.promote(name, stored.version)
    return stored


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
    """The ONNX Runtime fp32 engine: ``build_engine`` with its defaults, kept for the callers that predate it."""
    return build_engine(
        model,
        recipe,
        store,
        name,
        threshold=threshold,
        calibration=calibration,
        evaluation=evaluation,
        batch=batch,
        promote=promote,
    )
