"""Shadow engines: other engines that score each job beside the serving one, on the same prepared regions (no
second decode, no second face detection), so a candidate is judged on live traffic before it is promoted.

A shadow must cut the same regions as the serving engine (crop mode, face margin, face-confidence floor: the
``regions`` of its input contract); it may differ in input size, resize rule and normalisation, and then
the same crops are preprocessed once more for it. Shadow verdicts are ordinary verdict rows with the role
``shadow``: stored in the job's transaction with its serving verdict, never announced on the result topic,
never dead-lettered, and left out of ``latest_verdicts``. A job answered from an earlier verdict (an exact
re-upload) is not decoded, so it gets no shadow verdict.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from deepsift.daemon.pipeline.records import JudgeConfig, PreparedMedia
from deepsift.daemon.records import VerdictRecord
from deepsift.engines.backends import EngineOutputs, LoadedEngine
from deepsift.engines.errors import EngineError
from deepsift.engines.manifest import EngineManifest
from deepsift.engines.preprocess import InputContract, preprocess_batch

Judge = Callable[[PreparedMedia, EngineOutputs | Exception | None, EngineManifest, JudgeConfig], VerdictRecord]


def regions_of(contract: InputContract) -> tuple[object, ...]:
    """What decides which regions an engine scores: two engines with the same can share one face detection."""
    return (contract.crop_mode, contract.face_margin, contract.min_face_confidence)


def check_shadow(shadow: EngineManifest, serving: EngineManifest) -> None:
    """Refuse a shadow that is the serving engine, or that cuts other regions than it."""
    if (shadow.name, shadow.version) == (serving.name, serving.version):
        raise EngineError(f"shadow engine {shadow.name} v{shadow.version} is the serving engine")
    if regions_of(shadow.input) != regions_of(serving.input):
        raise EngineError(
            f"shadow engine {shadow.name} v{shadow.version} cuts other regions than {serving.name} "
            f"v{serving.version} (crop mode, face margin, face confidence: {regions_of(shadow.input)} vs "
            f"{regions_of(serving.input)}); a shadow scores the serving engine's regions"
        )


def shadow_pixels(
    crops: Sequence[Any], pixels: Any, serving: InputContract, shadows: Sequence[InputContract]
) -> tuple[Any, ...]:
    """Each shadow's input batch from the job's crops: the serving batch itself where the contracts agree, the
    crops preprocessed again where only size or normalisation differ, None where the regions differ (the
    serving engine was switched to one that cuts other regions)."""
    batches: list[Any] = []
    for contract in shadows:
        if contract == serving:
            batches.append(pixels)
        elif regions_of(contract) == regions_of(serving):
            batches.append(preprocess_batch(crops, contract))
        else:
            batches.append(None)
    return tuple(batches)


def shadow_verdicts(
    prepared: PreparedMedia,
    shadows: Sequence[LoadedEngine],
    outputs: Sequence[EngineOutputs | Exception | None],
    config: JudgeConfig,
    judge: Judge,
) -> tuple[VerdictRecord, ...]:
    """One shadow verdict per shadow engine for a job that was decoded (or failed before it): judged as the
    serving verdict is, named by the shadow, without the upload signals the serving verdict already carries."""
    if prepared.reused is not None:
        return ()
    serving = prepared.engine.manifest if prepared.engine is not None else None
    records = []
    for i, (engine, scores) in enumerate(zip(shadows, outputs, strict=True)):
        manifest = engine.manifest
        if serving is not None and (manifest.name, manifest.version) == (serving.name, serving.version):
            continue  # the shadow was promoted: it is this job's serving engine
        has_pixels = prepared.pixels is not None
        if has_pixels and (i >= len(prepared.shadow_pixels) or prepared.shadow_pixels[i] is None):
            continue  # prepared for an engine that cuts other regions
        record = judge(replace(prepared, engine=engine), scores, manifest, config)
        records.append(replace(record, role="shadow", hashes=(), near_duplicates=()))
    return tuple(records)
