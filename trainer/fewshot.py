"""Seed 000 §2.3 as a command: prototypes from a few labelled support images on a frozen encoder, and the
operating threshold chosen on a disjoint validation split to meet a minimum precision on fakes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn import metrics

from deepsift.engines.errors import DeepsiftError
from deepsift.engines.recipes import Recipe
from deepsift.trainer.data import ManifestDataset
from deepsift.trainer.evaluate import predict_dataset
from deepsift.trainer.metrics import threshold_for_precision


@dataclass(frozen=True)
class FewShotResult:
    threshold: float
    support_per_class: int
    val_precision: float
    val_recall: float
    val_roc_auc: float
    min_precision: float


def load_encoder(detector: torch.nn.Module, checkpoint: Path) -> None:
    """Take the image tower from a trained detector's state_dict (its ``tower.*`` keys), dropping its head —
    the paper starts few-shot adaptation from a detector trained on another dataset."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    tower = {k.removeprefix("tower."): v for k, v in state.items() if k.startswith("tower.")}
    if not tower:
        raise DeepsiftError(f"{checkpoint} has no tower.* weights to take the encoder from")
    detector.tower.load_state_dict(tower)


def support_indices(targets: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """``shots`` items per class, drawn without replacement with a fixed seed."""
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(targets):
        members = np.nonzero(targets == c)[0]
        if len(members) < shots:
            raise DeepsiftError(f"class {c} has {len(members)} support images, fewer than {shots} shots")
        chosen.append(rng.choice(members, size=shots, replace=False))
    return np.sort(np.concatenate(chosen))


@torch.no_grad()
def fit_prototypes(
    recipe: Recipe, detector: torch.nn.Module, support: ManifestDataset, val: ManifestDataset, seed: int = 0
) -> FewShotResult:
    """Set the prototypes from ``shots`` support images per class and pick the threshold on ``val``."""
    assert recipe.fewshot is not None
    spec = recipe.fewshot
    picked = support_indices(np.asarray(support.targets), spec.shots, seed)
    subset = torch.utils.data.Subset(support, picked.tolist())
    loader = torch.utils.data.DataLoader(subset, batch_size=recipe.train.batch_size)
    detector.eval()
    device = next(detector.buffers()).device
    embeddings = torch.cat([detector.embed(b["pixels"].to(device)) for b in loader])
    detector.set_prototypes(embeddings, torch.as_tensor(np.asarray(support.targets)[picked], device=device))
    found = predict_dataset(detector, recipe, val)
    threshold = threshold_for_precision(found.fake, found.p_fake, spec.min_precision)
    if threshold is None:
        raise DeepsiftError(f"no threshold reaches precision {spec.min_precision} on the validation split")
    flagged = found.p_fake >= threshold
    return FewShotResult(
        threshold=threshold,
        support_per_class=spec.shots,
        val_precision=float(metrics.precision_score(found.fake, flagged, zero_division=0)),
        val_recall=float(metrics.recall_score(found.fake, flagged, zero_division=0)),
        val_roc_auc=float(metrics.roc_auc_score(found.fake, found.p_fake)),
        min_precision=spec.min_precision,
    )
