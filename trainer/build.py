"""Build an engine from a trained detector: trace, export ONNX, build the backend's artifact (by its entry in
``trainer.artifacts.BACKEND_BUILDS``), check its parity with torch, write the manifest, store, promote.

ONNX is always exported: it is the TensorRT input, and it proves the detector has a portable form. The parity gate
compares every output of the artifact, run by the backend that will serve it, with eager torch fp32 on a fixed
golden batch, within a tolerance set by the engine's precision (at int8 also on the calibrated P(fake)); a failure
raises and stores nothing.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepsift.engines.backends import BACKENDS, BackendOptions, LoadedEngine
from deepsift.engines.errors import EngineError
from deepsift.engines.manifest import BackendSpec, BatchRange, Calibration, EngineManifest, sha256_file
from deepsift.engines.models.backbones import tower_activation
from deepsift.engines.recipes import Recipe
from deepsift.engines.store import EngineStore
from deepsift.trainer.artifacts import BACKEND_BUILDS, ONNX_ARTIFACT, Exported
from deepsift.trainer.export import (
    INPUT_NAME,
    OUTPUT_NAME,
    export_onnx,
    golden_batch,
    output_spec,
    reference_outputs,
    trace,
    weights_sha256,
)


@dataclass(frozen=True)
class Tolerance:
    """Largest |candidate − reference| allowed on one output: ``absolute + relative × max|reference|``; and, where
    ``p_fake`` is set, on the calibrated P(fake) of every golden image.

    The relative part scales with the output's own logit range (SD²'s class logits are τ·cos, up to ~14; a tiny
    untrained head's logits are ~0.1), so a reduced precision is judged by its relative rounding error. A rule on
    logits alone says little about verdicts where the range is wide: 10% of a range of 10 is a logit error of 1,
    which moves a P(fake) near 0.5 by 0.23; the P(fake) rule bounds what a verdict can move."""

    absolute: float
    relative: float
    p_fake: float | None = None

    def allowed(self, reference: np.ndarray) -> float:
        scale = float(np.max(np.abs(reference))) if reference.size else 0.0
        return self.absolute + self.relative * scale

    def rule(self) -> str:
        p_fake = "" if self.p_fake is None else f"; P(fake) {self.p_fake:g}"
        return f"{self.absolute:g} + {self.relative:g}×max|reference|{p_fake}"


# fp32: the same maths in other kernels (observed ≤ 2e-6 on every tiny recipe); 1e-3 absolute still catches a
#   changed weight or a wrong branch. fp16 keeps 11 significant bits (unit roundoff 4.9e-4); rounding compounds
#   through a ViT's blocks to ~1e-3..1e-2 relative at the logits, so 1% of the logit range plus 0.01 (at P = 0.5 a
#   logit error of 0.01 moves P(fake) by 0.0025). bf16 keeps 8 bits (unit roundoff 3.9e-3, 8× fp16's), hence 5%
#   plus 0.05 (≤ 0.0125 in P(fake)). int8: each weight channel quantised to 1/127 of its range and each
#   activation to 1/255 of its batch's range, hence 10% plus 0.1 on logits, and 0.02 on the calibrated P(fake):
#   ONNX Runtime's dynamic int8 (trainer.quantize) moved P(fake) by ≤ 0.002 on golden images and ≤ 0.0051 on the
#   400 validation crops of the demo engine, ≤ 0.0002 on a ViT-B/16 (benchmarks/int8.py), so 0.02 leaves 4×
#   headroom while a broken quantization (saturating kernels, an outlier channel rounding its neighbours to 0)
#   moves it by tenths. The gate runs on the build machine's CPU: build where the engine will be served.
#   Masks are compared on their logits with the same rule.
PARITY_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(absolute=1e-3, relative=0.0),
    "fp16": Tolerance(absolute=1e-2, relative=1e-2),
    "bf16": Tolerance(absolute=5e-2, relative=5e-2),
    "int8": Tolerance(absolute=1e-1, relative=1e-1, p_fake=0.02),
}
FP32_PARITY_TOLERANCE = PARITY_TOLERANCES["fp32"].absolute
P_FAKE = "p_fake"  # the parity figures' name for the calibrated P(fake)


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
    reference: dict[str, np.ndarray],
    candidate: dict[str, np.ndarray],
    precision: str,
    what: str = "candidate",
    calibration: Calibration | None = None,
) -> Parity:
    """Compare every reference output with the candidate's, and where the precision's tolerance has a P(fake) rule
    the fake logits through ``calibration`` (default: none); raise ``EngineError`` with the figures if any output
    is missing, differs in shape, is not finite, or differs by more than the precision's tolerance."""
    tolerance = PARITY_TOLERANCES[precision]
    compared = {name: (ref, candidate.get(name), tolerance.allowed(ref)) for name, ref in reference.items()}
    fake, fake_candidate = reference.get(OUTPUT_NAME), candidate.get(OUTPUT_NAME)
    comparable = fake is not None and np.shape(fake_candidate) == fake.shape  # else the logit's failure says why
    if tolerance.p_fake is not None and comparable and np.all(np.isfinite([fake, fake_candidate])):
        p_fake = (calibration or Calibration()).p_fake_array
        compared[P_FAKE] = (p_fake(fake), p_fake(fake_candidate), tolerance.p_fake)
    max_abs: dict[str, float] = {}
    allowed: dict[str, float] = {}
    failures: list[str] = []
    for name, (expected, actual, limit) in compared.items():
        allowed[name] = limit
        if actual is None or np.shape(actual) != expected.shape:
            failures.append(f"{name} has shape {None if actual is None else np.shape(actual)}, not {expected.shape}")
            continue
        max_abs[name] = float(np.max(np.abs(np.asarray(actual, np.float64) - expected), initial=0.0))
        if not np.all(np.isfinite(actual)):
            failures.append(f"{name} has {int(np.sum(~np.isfinite(actual)))} non-finite values")
        elif not max_abs[name] <= allowed[name]:  # also refuses a NaN reference, which compares False
            failures.append(f"{name} max |Δ| {max_abs[name]:.3e} > allowed {allowed[name]:.3e}")
    if failures:
        raise EngineError(f"{what} differs from torch at {precision} ({tolerance.rule()}): " + "; ".join(failures))
    return Parity(precision, max_abs, allowed)


def candidate_outputs(
    manifest: EngineManifest, artifact: Path, golden: torch.Tensor, device: str = "cpu"
) -> dict[str, np.ndarray]:
    """What the built artifact gives on ``golden``, run by its own backend."""
    backend = BACKENDS.get(manifest.backend.name)(manifest, artifact, BackendOptions(device=device))
    return backend.run(golden.numpy(), manifest.outputs.names())


def parity_golden(image_size: int, batch: BatchRange) -> torch.Tensor:
    """The golden batch an engine of ``batch``'s range is checked on."""
    return golden_batch(image_size, n=min(max(4, batch.min), batch.max))


def engine_parity(model: nn.Module, engine: LoadedEngine, calibration: Calibration) -> Parity:
    """The parity gate again on a built engine, through ``calibration``: ``trainer rebuild-engine`` fits it on the
    built engine's own logits, and a sharper one (temperature < 1) magnifies a reduced precision's error in P(fake)."""
    manifest = engine.manifest
    golden = parity_golden(manifest.input.size, manifest.batch)
    reference = reference_outputs(model, manifest.outputs, golden)
    candidate = engine.backend.run(golden.numpy(), manifest.outputs.names())
    what = f"{manifest.backend.name} engine, calibrated"
    return check_parity(reference, candidate, manifest.backend.precision, what, calibration)


def _manifest(
    recipe: Recipe, name: str, artifact: Path, backend: BackendSpec, model: nn.Module, **fields: Any
) -> EngineManifest:
    """The manifest of ``model`` built from ``recipe`` into ``artifact``; ``fields`` are the build's own."""
    return EngineManifest(
        name=name,
        recipe=recipe.name,
        recipe_sha256=recipe.sha256,
        detector=recipe.detector,
        task=recipe.task,
        input=recipe.input,
        backend=backend,
        input_name=INPUT_NAME,
        outputs=output_spec(recipe.task),
        artifact=artifact.name,
        artifact_sha256=sha256_file(artifact),
        weights_sha256=weights_sha256(model),
        backbone_activation=tower_activation(model),
        **fields,
    )


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
    outputs (and, at int8, its P(fake) through ``calibration``) disagree with torch beyond the precision's
    tolerance. ``timing_cache`` is TensorRT's."""
    if backend not in BACKEND_BUILDS:
        raise EngineError(f"cannot build backend {backend!r}; choose one of {', '.join(BACKEND_BUILDS)}")
    how = BACKEND_BUILDS.get(backend)
    if precision not in how.precisions:
        raise EngineError(f"backend {backend} builds {', '.join(how.precisions)} engines, not {precision}")
    device = "cuda" if how.gpu and torch.cuda.is_available() else "cpu"
    batch = batch or BatchRange(min=1, opt=32, max=64)
    spec = output_spec(recipe.task)
    golden = parity_golden(recipe.input.size, batch)
    reference = reference_outputs(model, spec, golden)
    with tempfile.TemporaryDirectory(prefix="deepsift-build-") as tmp:
        program = trace(model, spec, recipe.input.size, batch)
        onnx = export_onnx(program, spec, Path(tmp) / ONNX_ARTIFACT)
        exported = Exported(program, spec, onnx, recipe.input.size, batch)
        artifact, backend_spec = how.artifact(exported, precision, timing_cache)
        manifest = _manifest(
            recipe, name, artifact, backend_spec, model, batch=batch, calibration=calibration or Calibration(),
            threshold=threshold, evaluation=dict(evaluation or {}),
        )  # fmt: skip
        candidate = candidate_outputs(manifest, artifact, golden, device)
        what = f"{backend} engine on {device}"
        parity = check_parity(reference, candidate, precision, what, manifest.calibration)
        figures: dict[str, float | int | str] = {**parity.evaluation(), "parity_device": device}
        if precision in how.methods:
            figures["quantization"] = how.methods[precision]
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
