"""From an engine's raw outputs for one job's regions to what a verdict states: calibrated P(fake) per
region, class probabilities (multi-class engines), the label, and tamper masks as PNGs (mask engines).

Multi-class engines (seed 000 §2.2 real/synthetic/tampered, SD²'s manipulation types) give P(fake) as
1 − P(real) through their fake logit, calibrated by the manifest like any other engine. Their video-level
class probabilities are the mean softmax over the decisive track's regions — the same regions that decide
P(fake) — and the label of a fake is its most probable non-real class.

An engine whose manifest has an uncertain band labels media whose P(fake) falls inside it ``uncertain`` (binary
and multi-class alike): the verdict stays ``ok`` with its P(fake) and class probabilities, and goes to review.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from deepsift.daemon.records import MaskRecord
from deepsift.engines.backends import EngineOutputs
from deepsift.engines.manifest import EngineManifest


@dataclass(frozen=True)
class RegionScores:
    """Per-region results for one job: ``p_fake`` (N, calibrated), ``class_probs`` (N×C) where the engine
    has classes, ``mask_logits`` (N×S×S) where masks were asked for and the engine makes them."""

    p_fake: np.ndarray
    class_probs: np.ndarray | None = None
    mask_logits: np.ndarray | None = None


def region_scores(outputs: EngineOutputs, manifest: EngineManifest) -> RegionScores:
    class_probs = None
    if outputs.class_logits is not None:
        z = outputs.class_logits.astype(np.float64)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        class_probs = z / z.sum(axis=1, keepdims=True)
    return RegionScores(manifest.calibration.p_fake_array(outputs.fake_logit), class_probs, outputs.mask_logits)


def media_class_probs(
    scores: RegionScores, manifest: EngineManifest, track_ids: Sequence[int | None], decisive_track: int, p_fake: float
) -> dict[str, float]:
    """Class probabilities of the media. Binary engines: {real, positive class} from P(fake)."""
    task = manifest.task
    if scores.class_probs is None:
        fake = task.positive_class
        real = next(c for c in task.class_names if c != fake)
        return {real: 1.0 - p_fake, fake: p_fake}
    chosen = [i for i, t in enumerate(track_ids) if (t if t is not None else 0) == decisive_track]
    mean = scores.class_probs[chosen or list(range(len(track_ids)))].mean(axis=0)
    return {name: float(p) for name, p in zip(task.class_names, mean, strict=True)}


UNCERTAIN = "uncertain"  # the label of P(fake) inside the manifest's uncertain band, for any task


def media_label(manifest: EngineManifest, p_fake: float, class_probs: dict[str, float]) -> str:
    """``uncertain`` inside the manifest's uncertain band (``low <= p_fake < high``), where there is one; else
    ``real`` below the threshold, and above it the positive class (binary) or the likeliest non-real class."""
    task = manifest.task
    band = manifest.uncertain_band
    if band is not None and band.contains(p_fake):
        return UNCERTAIN
    if p_fake < manifest.threshold:
        return task.real_class
    if task.kind == "binary":
        return task.positive_class
    return max((c for c in task.class_names if c != task.real_class), key=lambda c: class_probs[c])


def mask_records(
    scores: RegionScores, frame_indices: Sequence[int], track_ids: Sequence[int | None], limit: int
) -> tuple[MaskRecord, ...]:
    """PNG masks (8-bit P(tampered) per pixel, in the engine's input frame) of the ``limit`` most suspicious
    regions, most suspicious first."""
    if scores.mask_logits is None or limit <= 0:
        return ()
    order = np.argsort(-scores.p_fake, kind="stable")[:limit]
    return tuple(_mask_png(scores.mask_logits[i], frame_indices[i], track_ids[i]) for i in order)


def _mask_png(logits: np.ndarray, frame_index: int, track_id: int | None) -> MaskRecord:
    probability = np.exp(-np.logaddexp(0.0, -logits.astype(np.float64)))
    pixels = np.clip(np.rint(probability * 255.0), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG", optimize=True)
    height, width = pixels.shape
    return MaskRecord(frame_index, buffer.getvalue(), width, height, track_id)
