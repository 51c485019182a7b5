"""The promotion gates of ``trainer rebuild-engine``: the new engine and the current one scored on the same items,
each preprocessed by its own input contract and judged at its own threshold, by one metric. A gate refuses when
the new engine's figure is undefined or drops by more than the allowed margin.

The ``validation`` gate scores the run's validation split (which the new engine was calibrated on); the optional
``reviewed`` gate a split of a manifest of moderator-reviewed media (``trainer export-reviews``; its ``test`` split
is held out of training and calibration). Items are scored as listed, as validation is (one image each, a video
by its first frame): for a face-mode engine pass the manifest ``trainer prepare`` cut from the export.

A current engine that cannot run here (a TensorRT plan for another GPU) is compared by its recorded
``val_<metric>`` on validation; on reviewed items nothing recorded is comparable (they are another set each
time), so that gate refuses and says why.

An int8 engine also meets the ``int8`` gate: its validation ROC-AUC against the fp32 detector's own on the same
items, on fake logits (calibration-free, so both are ranked by the same thing), within ``INT8_MAX_AUC_DROP``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deepsift.engines.backends import BackendOptions, LoadedEngine, load_engine
from deepsift.engines.errors import EngineError
from deepsift.engines.manifest import Calibration, EngineManifest, UncertainBand
from deepsift.engines.recipes import Recipe
from deepsift.engines.store import EngineStore
from deepsift.trainer.data import ManifestDataset, dataset_for
from deepsift.trainer.metrics import binary_metrics

GATE_METRICS = ("roc_auc", "average_precision", "accuracy", "balanced_accuracy", "f1_macro")  # binary_metrics
# Dynamic int8 (trainer.quantize) lowered the demo engine's validation AUC by 0.0008; half the promotion gate's
# default margin (0.01), since the two stack: an int8 build may lose this much against its own fp32 detector and
# the new detector as much again against the current engine.
INT8_MAX_AUC_DROP = 0.005


@dataclass(frozen=True)
class GateSplit:
    """Items a gate scores both engines on; ``key`` prefixes their figures in the manifest's evaluation."""

    gate: str  # "validation" | "reviewed": named in the gate's reason
    key: str  # "val" | "reviewed"
    data: Path
    split: str

    def items(self, recipe: Recipe) -> ManifestDataset:
        """The split's items, preprocessed by ``recipe``'s input contract."""
        try:
            return dataset_for(self.data, self.split, recipe)  # type: ignore[arg-type]
        except (OSError, ValueError) as e:
            raise EngineError(f"{self.gate} items: {e}") from e


@dataclass(frozen=True)
class Gate:
    passed: bool
    reason: str
    baseline_version: int | None = None
    baseline_value: float | None = None
    name: str = "validation"


def engine_logits(engine: LoadedEngine, dataset: ManifestDataset) -> np.ndarray:
    """The engine's fake logit for every item, preprocessed by the dataset's recipe."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=engine.manifest.batch.max)
    return np.concatenate([engine.logits(b["pixels"].numpy()) for b in loader])


def engine_p_fake(engine: LoadedEngine, dataset: ManifestDataset) -> np.ndarray:
    """The engine's calibrated P(fake) for every item, preprocessed by the dataset's recipe."""
    return engine.manifest.calibration.p_fake_array(engine_logits(engine, dataset))


def fake_labels(dataset: ManifestDataset) -> np.ndarray:
    return np.array([row.label == "fake" for row in dataset.rows], dtype=int)


def split_figures(
    labels: np.ndarray, p_fake: np.ndarray, threshold: float, band: UncertainBand | None = None
) -> dict[str, float | int]:
    """The binary metrics at ``threshold``, the item count, and the share inside the band where there is one."""
    found: dict[str, float | int] = {**binary_metrics(labels, p_fake, threshold), "n": len(labels)}
    if band is not None:
        found["uncertain_share"] = float(np.mean((p_fake >= band.low) & (p_fake < band.high)))
    return found


def engine_figures(
    engine: LoadedEngine, calibration: Calibration, threshold: float, items: ManifestDataset
) -> dict[str, float | int]:
    """An engine's figures on items, through ``calibration`` and at ``threshold``."""
    return split_figures(fake_labels(items), calibration.p_fake_array(engine_logits(engine, items)), threshold)


def current_figures(
    store: EngineStore,
    name: str,
    recipe: Recipe,
    splits: Sequence[GateSplit],
    metric: str,
    options: BackendOptions,
    log: Callable[[str], None] = print,
) -> tuple[int, list[float]] | None:
    """The current engine's version and its ``metric`` on each split (see the module docstring); None when the
    store has no current engine. ``recipe`` is the new run's: only its input contract is swapped for the
    current engine's own."""
    version = store.current_version(name)
    if version is None:
        return None
    path = store.resolve(name, version)
    try:
        current = load_engine(path, options=options)
    except EngineError as e:
        recorded = EngineManifest.read(path).evaluation.get(f"val_{metric}")
        log(f"current engine v{version} cannot run here ({e}); comparing with its recorded val_{metric}")
        value = float(recorded) if isinstance(recorded, int | float) else float("nan")
        return version, [value if s.key == "val" else float("nan") for s in splits]
    own = recipe.model_copy(update={"input": current.manifest.input})
    calibration, threshold = current.manifest.calibration, current.manifest.threshold
    return version, [float(engine_figures(current, calibration, threshold, s.items(own))[metric]) for s in splits]


def decide(
    value: float, reference: tuple[int, float] | None, metric: str, max_drop: float, gate: str = "validation"
) -> Gate:
    """One gate: ``value`` of the new engine against the current engine's (``reference``: version, value)."""
    if not np.isfinite(value):
        return Gate(False, f"{gate} {metric} is {value}: the split needs real and fake items", name=gate)
    if reference is None:
        return Gate(True, f"{gate}: no current engine to compare with", name=gate)
    version, before = reference
    if not np.isfinite(before):
        return Gate(False, f"{gate}: no comparable {metric} for the current v{version}", version, before, gate)
    dropped = value < before - max_drop
    if dropped:
        reason = f"{gate} {metric} {value:.4f} < v{version}'s {before:.4f} − {max_drop}"
    else:
        reason = f"{gate} {metric} {value:.4f} vs v{version}'s {before:.4f} (allowed drop {max_drop})"
    return Gate(not dropped, reason, version, before, gate)


def combined(gates: Sequence[Gate]) -> Gate:
    """Every gate must pass; a refusal names the gates that refused. Baseline figures are the first gate's."""
    refused = [g for g in gates if not g.passed]
    if refused:
        reason = "; ".join(f"refused by the {g.name} gate: {g.reason}" for g in refused)
    else:
        reason = "; ".join(g.reason for g in gates)
    first = gates[0]
    return Gate(not refused, reason, first.baseline_version, first.baseline_value, " and ".join(g.name for g in gates))


def detector_logits(model: nn.Module, dataset: ManifestDataset, device: torch.device, batch_size: int) -> np.ndarray:
    """The detector's own fake logit (eager torch fp32, the parity reference) for every item; leaves the model on
    ``device``."""
    model = model.eval().to(device)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    with torch.no_grad():
        found = [model.outputs(b["pixels"].to(device)).fake_logit.reshape(-1).float().cpu().numpy() for b in loader]
    return np.concatenate(found)


def int8_gate(
    logits: np.ndarray, fp32_logits: np.ndarray, labels: np.ndarray, max_drop: float
) -> tuple[Gate, dict[str, float]]:
    """The int8 engine's validation ROC-AUC against the fp32 detector's, and the figures for the manifest."""
    auc, fp32_auc = (binary_metrics(labels, scores, threshold=0.0)["roc_auc"] for scores in (logits, fp32_logits))
    figures = {"int8_val_roc_auc": auc, "int8_val_roc_auc_fp32": fp32_auc, "int8_val_roc_auc_drop": fp32_auc - auc}
    figures["int8_max_roc_auc_drop"] = max_drop
    if not (np.isfinite(auc) and np.isfinite(fp32_auc)):
        passed, reason = False, "int8 roc_auc is undefined: validation needs real and fake items"
    elif fp32_auc - auc > max_drop:
        passed, reason = False, f"int8 roc_auc {auc:.4f} < fp32's {fp32_auc:.4f} − {max_drop}"
    else:
        passed, reason = True, f"int8 roc_auc {auc:.4f} vs fp32's {fp32_auc:.4f} (allowed drop {max_drop})"
    return Gate(passed, reason, name="int8"), figures
