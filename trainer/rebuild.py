"""``trainer rebuild-engine RECIPE``: after retraining, turn the newest checkpoint into the served engine, safely.

newest finished run of the recipe → build (ONNX export, the backend's artifact, parity against torch on the
golden batch: a failure stores nothing) → the built engine's fake logits on the validation split (so
calibration fits what will be served, fp16 and TensorRT included) → calibration and the operating threshold
for a target false-positive rate → optionally the uncertain band around it for a target precision
(``trainer.band``) → the gates (``trainer.gates``): the current engine scored on the same validation images and,
when a reviewed manifest is given, both engines on its reviewed items (each preprocessed by its own input
contract, at its own threshold) and, for an int8 engine, the parity gate again through the fitted calibration
(a failure stores nothing) and the int8 gate (validation ROC-AUC against the fp32 detector's) → the next version
in the store → promoted with one atomic rename, unless a gate refused (the metric dropped by more than the allowed
margin: then the version stays stored, unpromoted, for inspection; ``trainer engines promote`` overrides).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from deepsift.engines.backends import BackendOptions, LoadedEngine, load_engine
from deepsift.engines.errors import EngineError
from deepsift.engines.manifest import BatchRange, EngineManifest, UncertainBand, sha256_file
from deepsift.engines.models import build_detector
from deepsift.engines.store import EngineStore
from deepsift.trainer.band import choose_band
from deepsift.trainer.build import P_FAKE, build_engine, engine_parity
from deepsift.trainer.calibrate import CalibrationResult, calibrate
from deepsift.trainer.data import ManifestDataset
from deepsift.trainer.gates import (
    GATE_METRICS,
    INT8_MAX_AUC_DROP,
    Gate,
    GateSplit,
    combined,
    current_figures,
    decide,
    detector_logits,
    engine_logits,
    fake_labels,
    int8_gate,
    split_figures,
)
from deepsift.trainer.runs import TrainedRun, newest_run, read_run

Figures = dict[str, float | int]


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
    band_precision: float | None = None  # target precision of the uncertain band (trainer.band); None: no band
    reviewed: Path | None = None  # dataset manifest of reviewed media (trainer export-reviews): the reviewed gate
    reviewed_split: str = "test"  # the split of `reviewed` both engines are scored on
    max_int8_auc_drop: float = INT8_MAX_AUC_DROP  # int8 only: largest validation ROC-AUC drop against fp32


@dataclass(frozen=True)
class RebuildResult:
    manifest: EngineManifest
    promoted: bool
    gate: Gate  # every gate together: passed only if each did
    gates: tuple[Gate, ...] = ()  # validation, then reviewed when there is a reviewed manifest, then int8


@dataclass(frozen=True)
class _Scored:
    """The new engine as it will be served: calibration, threshold, band, and its figures on each gate split."""

    fitted: CalibrationResult
    band: UncertainBand | None
    figures: list[Figures]
    val_ece: float
    val_logits: np.ndarray


def _check(options: RebuildOptions) -> None:
    if options.metric not in GATE_METRICS:
        raise EngineError(f"--metric must be one of {', '.join(GATE_METRICS)}, not {options.metric!r}")
    if options.band_precision is not None and not 0.0 < options.band_precision <= 1.0:
        raise EngineError(f"--uncertain-precision must lie in (0, 1], not {options.band_precision}")


def _gate_splits(data: Path, options: RebuildOptions) -> list[GateSplit]:
    splits = [GateSplit("validation", "val", data, "val")]
    if options.reviewed is not None:
        splits.append(GateSplit("reviewed", "reviewed", options.reviewed, options.reviewed_split))
    return splits


def _score_new(
    built: LoadedEngine, items: Sequence[ManifestDataset], options: RebuildOptions, log: Callable[[str], None]
) -> _Scored:
    """Calibrate on validation (the first items), choose the band there, then score every split as served."""
    labels = fake_labels(items[0])
    log(f"scoring {len(items[0])} validation items with the built engine")
    logits = engine_logits(built, items[0])
    fitted = calibrate(logits, labels, options.calibration, options.target_fpr)
    log(f"calibration {options.calibration}: {fitted.report}; threshold {fitted.threshold:.4f}")
    p_fake = fitted.calibration.p_fake_array(logits)
    band = None
    if options.band_precision is not None:
        band = choose_band(p_fake, labels, fitted.threshold, options.band_precision)
        log(f"uncertain band [{band.low:.4f}, {band.high:.4f}) holds {band.share_uncertain:.1%} of validation")
    figures = [split_figures(labels, p_fake, fitted.threshold, band)]
    for more in items[1:]:
        p_more = fitted.calibration.p_fake_array(engine_logits(built, more))
        figures.append(split_figures(fake_labels(more), p_more, fitted.threshold, band))
    return _Scored(fitted, band, figures, float(fitted.report["ece_after"]), logits)  # held out (calibrate)


def _int8_checks(
    model: torch.nn.Module,
    built: LoadedEngine,
    scored: _Scored,
    val: ManifestDataset,
    options: RebuildOptions,
    device: torch.device,
    log: Callable[[str], None],
) -> tuple[tuple[Gate, ...], dict[str, float | int | str]]:
    """For an int8 engine: parity through the fitted calibration (raises: nothing is stored), then the int8 gate
    against the fp32 detector on validation; no gates and no figures at other precisions."""
    if options.precision != "int8":
        return (), {}
    parity = engine_parity(model, built, scored.fitted.calibration)
    fp32 = detector_logits(model, val, device, options.batch.max)
    gate, figures = int8_gate(scored.val_logits, fp32, fake_labels(val), options.max_int8_auc_drop)
    log(f"calibrated P(fake) within {parity.max_abs[P_FAKE]:.2e} of torch on the golden batch; {gate.reason}")
    return (gate,), {**parity.evaluation(), **figures}


def _evaluation(
    draft: EngineManifest,
    scored: _Scored,
    splits: Sequence[GateSplit],
    options: RebuildOptions,
    run: TrainedRun,
    gate: Gate,
) -> dict[str, float | int | str]:
    evaluation: dict[str, float | int | str] = dict(draft.evaluation)
    for split, figures in zip(splits, scored.figures, strict=True):
        evaluation |= {f"{split.key}_{k}": v for k, v in figures.items()}
    evaluation |= {f"calibration_{k}": v for k, v in scored.fitted.report.items() if isinstance(v, int | float | str)}
    evaluation |= {"val_ece": scored.val_ece, "target_fpr": options.target_fpr}
    if scored.band is not None:
        band = scored.band.model_dump(exclude={"n", "share_uncertain"})
        evaluation |= {f"band_{k}": float("nan") if v is None else v for k, v in band.items()}
    if options.reviewed is not None:
        evaluation |= {"reviewed_split": options.reviewed_split, "reviewed_sha256": sha256_file(options.reviewed)}
    evaluation |= {"checkpoint_sha256": sha256_file(run.checkpoint), "gate": gate.reason}
    return {k: _finite(v) for k, v in evaluation.items()}


def _finite(value: float | int | str) -> float | int | str:
    """JSON has no NaN: an undefined figure (one class only) is stored as the string "nan"."""
    return str(value) if isinstance(value, float) and not np.isfinite(value) else value


def _gates(
    scored: _Scored, reference: tuple[int, list[float]] | None, splits: Sequence[GateSplit], options: RebuildOptions
) -> tuple[Gate, ...]:
    """One gate per split: the new engine's metric there against the current engine's on the same items."""
    gates = []
    for i, (split, figures) in enumerate(zip(splits, scored.figures, strict=True)):
        before = None if reference is None else (reference[0], reference[1][i])
        gates.append(
            decide(float(figures[options.metric]), before, options.metric, options.max_metric_drop, split.gate)
        )
    return tuple(gates)


def rebuild_engine(store: EngineStore, options: RebuildOptions, log: Callable[[str], None] = print) -> RebuildResult:
    _check(options)
    run = read_run(options.run) if options.run else newest_run(options.runs, options.recipe, log)
    data = options.data or run.data
    if data is None:
        raise EngineError(f"run {run.folder} recorded no dataset manifest: pass --data")
    splits = _gate_splits(data, options)
    items = [split.items(run.recipe) for split in splits]  # before the build: a missing split fails fast
    device = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    backend_options = BackendOptions(device=str(device))
    log(f"run {run.folder} ({run.recipe.name}), " + ", ".join(f"{s.gate}: {s.split} split of {s.data}" for s in splits))

    model = build_detector(run.recipe)
    model.load_state_dict(torch.load(run.checkpoint, map_location="cpu", weights_only=True))
    with tempfile.TemporaryDirectory(prefix="deepsift-rebuild-") as scratch_root:
        scratch = EngineStore(scratch_root)
        log(f"building the {options.backend} {options.precision} engine (export, parity on the golden batch)")
        draft = build_engine(
            model, run.recipe, scratch, options.name, backend=options.backend, precision=options.precision,
            batch=options.batch, promote=False,
        )  # fmt: skip
        built = load_engine(scratch.resolve(options.name, draft.version), options=backend_options)
        scored = _score_new(built, items, options, log)
        int8_gates, int8_figures = _int8_checks(model, built, scored, items[0], options, device, log)
        draft = draft.model_copy(update={"evaluation": {**draft.evaluation, **int8_figures}})
        reference = current_figures(store, options.name, run.recipe, splits, options.metric, backend_options, log)
        gates = _gates(scored, reference, splits, options) + int8_gates
        gate = combined(gates)
        manifest = EngineManifest.model_validate(
            draft.model_dump()
            | {
                "calibration": scored.fitted.calibration,
                "threshold": scored.fitted.threshold,
                "uncertain_band": scored.band,
                "evaluation": _evaluation(draft, scored, splits, options, run, gate),
            }
        )
        stored = store.add(manifest, scratch.resolve(options.name, draft.version) / draft.artifact)
    log(f"engine {stored.name} v{stored.version} stored: {gate.reason}")
    promoted = gate.passed and options.promote
    if promoted:
        store.promote(stored.name, stored.version, reason=f"trainer rebuild-engine: {gate.reason}")
    return RebuildResult(stored, promoted, gate, gates)
