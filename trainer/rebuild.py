"""``trainer rebuild-engine RECIPE``: after retraining, turn the newest checkpoint into the served engine, safely.

newest finished run of the recipe → build (ONNX export, the backend's artifact, parity against torch on the
golden batch: a failure stores nothing) → the built engine's fake logits on the validation split (so
calibration fits what will be served, fp16 and TensorRT included) → calibration and the operating threshold
for a target false-positive rate → the current engine scored on the same images (preprocessed by its own
input contract, at its own threshold) → the next version in the store → promoted with one atomic rename,
unless the metric dropped by more than the allowed margin (then the version stays stored, unpromoted, for
inspection: ``trainer engines promote`` overrides).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from deepsift.engines.backends import BackendOptions, LoadedEngine, load_engine
from deepsift.engines.errors import EngineError
from deepsift.engines.manifest import BatchRange, EngineManifest, sha256_file
from deepsift.engines.models import build_detector
from deepsift.engines.store import EngineStore
from deepsift.trainer.build import build_engine
from deepsift.trainer.calibrate import calibrate, expected_calibration_error
from deepsift.trainer.data import ManifestDataset, dataset_for
from deepsift.trainer.metrics import binary_metrics
from deepsift.trainer.runs import TrainedRun, newest_run, read_run

GATE_METRICS = ("roc_auc", "average_precision", "accuracy", "balanced_accuracy", "f1_macro")  # binary_metrics


@dataclass(frozen=True)
class RebuildOptions:
    recipe: str  # the recipe the runs were trained with (its name, as in their recipe.json)
    name: str  # the engine's name in the store
    runs: Path = Path("runs")  # folder of run folders (`trainer fit --out runs/...`)
    run: Path | None = None  # one run folder instead of the newest
    data: Path | None = None  # dataset manifest with a val split; default: the one the run recorded
    backend: str = "onnxruntime"
    precision: str = "fp32"
    calibration: str = "temperature"  # temperature | isotonic | none
    target_fpr: float = 0.01
    metric: str = "roc_auc"  # from trainer.metrics.binary_metrics, higher is better
    max_metric_drop: float = 0.01
    batch: BatchRange = field(default_factory=lambda: BatchRange(min=1, opt=32, max=64))
    promote: bool = True
    device: str | None = None


@dataclass(frozen=True)
class Gate:
    passed: bool
    reason: str
    baseline_version: int | None = None
    baseline_value: float | None = None


@dataclass(frozen=True)
class RebuildResult:
    manifest: EngineManifest
    promoted: bool
    gate: Gate


def engine_logits(engine: LoadedEngine, dataset: ManifestDataset) -> np.ndarray:
    """The engine's fake logit for every item, preprocessed by the dataset's recipe."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=engine.manifest.batch.max)
    return np.concatenate([engine.logits(b["pixels"].numpy()) for b in loader])


def engine_p_fake(engine: LoadedEngine, dataset: ManifestDataset) -> np.ndarray:
    """The engine's calibrated P(fake) for every item, preprocessed by the dataset's recipe."""
    return engine.manifest.calibration.p_fake_array(engine_logits(engine, dataset))


def fake_labels(dataset: ManifestDataset) -> np.ndarray:
    return np.array([row.label == "fake" for row in dataset.rows], dtype=int)


def baseline(
    store: EngineStore,
    name: str,
    run: TrainedRun,
    data: Path,
    metric: str,
    options: BackendOptions,
    log: Callable[[str], None] = print,
) -> tuple[int, float] | None:
    """The current engine's metric on the same validation items, preprocessed by its own input contract and
    judged at its own threshold. If it cannot run here (a TensorRT plan for another GPU), its recorded
    ``val_<metric>``; NaN when there is neither, which the gate refuses."""
    version = store.current_version(name)
    if version is None:
        return None
    path = store.resolve(name, version)
    try:
        current = load_engine(path, options=options)
    except EngineError as e:
        recorded = EngineManifest.read(path).evaluation.get(f"val_{metric}")
        log(f"current engine v{version} cannot run here ({e}); comparing with its recorded val_{metric}")
        return version, float(recorded) if isinstance(recorded, int | float) else float("nan")
    recipe = run.recipe.model_copy(update={"input": current.manifest.input})
    dataset = dataset_for(data, "val", recipe)
    p_fake = engine_p_fake(current, dataset)
    return version, binary_metrics(fake_labels(dataset), p_fake, current.manifest.threshold)[metric]


def decide(value: float, reference: tuple[int, float] | None, metric: str, max_drop: float) -> Gate:
    if not np.isfinite(value):
        return Gate(False, f"validation {metric} is {value}: the split needs real and fake items")
    if reference is None:
        return Gate(True, "no current engine to compare with")
    version, before = reference
    if not np.isfinite(before):
        return Gate(False, f"no comparable {metric} for the current v{version}", version, before)
    if value < before - max_drop:
        return Gate(False, f"{metric} {value:.4f} < v{version}'s {before:.4f} − {max_drop}", version, before)
    return Gate(True, f"{metric} {value:.4f} vs v{version}'s {before:.4f} (allowed drop {max_drop})", version, before)


def _finite(value: float | int | str) -> float | int | str:
    """JSON has no NaN: an undefined figure (one class only) is stored as the string "nan"."""
    return str(value) if isinstance(value, float) and not np.isfinite(value) else value


def rebuild_engine(store: EngineStore, options: RebuildOptions, log: Callable[[str], None] = print) -> RebuildResult:
    if options.metric not in GATE_METRICS:
        raise EngineError(f"--metric must be one of {', '.join(GATE_METRICS)}, not {options.metric!r}")
    run = read_run(options.run) if options.run else newest_run(options.runs, options.recipe, log)
    data = options.data or run.data
    if data is None:
        raise EngineError(f"run {run.folder} recorded no dataset manifest: pass --data")
    device = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    backend_options = BackendOptions(device=str(device))
    log(f"run {run.folder} ({run.recipe.name}), validation split of {data}")

    model = build_detector(run.recipe)
    model.load_state_dict(torch.load(run.checkpoint, map_location="cpu", weights_only=True))
    val = dataset_for(data, "val", run.recipe)
    labels = fake_labels(val)

    with tempfile.TemporaryDirectory(prefix="deepsift-rebuild-") as scratch_root:
        scratch = EngineStore(scratch_root)
        draft = build_engine(
            model, run.recipe, scratch, options.name, backend=options.backend, precision=options.precision,
            batch=options.batch, promote=False,
        )  # fmt: skip
        built = load_engine(scratch.resolve(options.name, draft.version), options=backend_options)
        logits = engine_logits(built, val)
        fitted = calibrate(logits, labels, options.calibration, options.target_fpr)
        log(f"calibration {options.calibration}: {fitted.report}; threshold {fitted.threshold:.4f}")
        p_fake = fitted.calibration.p_fake_array(logits)
        figures = binary_metrics(labels, p_fake, fitted.threshold)
        reference = baseline(store, options.name, run, data, options.metric, backend_options, log)
        gate = decide(figures[options.metric], reference, options.metric, options.max_metric_drop)
        evaluation = {
            **draft.evaluation,
            **{f"val_{k}": v for k, v in figures.items()},
            **{f"calibration_{k}": v for k, v in fitted.report.items() if isinstance(v, int | float | str)},
            "val_ece": expected_calibration_error(p_fake, labels),
            "val_n": len(labels),
            "target_fpr": options.target_fpr,
            "checkpoint_sha256": sha256_file(run.checkpoint),
            "gate": gate.reason,
        }
        manifest = draft.model_copy(
            update={
                "calibration": fitted.calibration,
                "threshold": fitted.threshold,
                "evaluation": {k: _finite(v) for k, v in evaluation.items()},
            }
        )
        stored = store.add(manifest, scratch.resolve(options.name, draft.version) / draft.artifact)
    log(f"engine {stored.name} v{stored.version} stored: {gate.reason}")
    promoted = gate.passed and options.promote
    if promoted:
        store.promote(stored.name, stored.version, reason=f"trainer rebuild-engine: {gate.reason}")
    return RebuildResult(stored, promoted, gate)
