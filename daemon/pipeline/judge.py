"""The judge stage: one job's engine outputs aggregated into its verdict (``engines.aggregate``), or its
recorded failure turned into one."""

from __future__ import annotations

from typing import Any

import numpy as np

from deepsift.daemon.outputs import RegionScores, mask_records, media_class_probs, media_label, region_scores
from deepsift.daemon.pipeline.records import JudgeConfig, PreparedMedia
from deepsift.daemon.records import (
    EngineIdentity,
    FrameScoreRecord,
    TrackSummaryRecord,
    VerdictRecord,
    fake_decision,
)
from deepsift.engines.aggregate import ScoredItem, aggregate
from deepsift.engines.backends import EngineOutputs
from deepsift.engines.manifest import EngineManifest


def engine_identity(manifest: EngineManifest) -> EngineIdentity:
    return EngineIdentity(manifest.name, manifest.version, manifest.artifact_sha256)


def verdict(
    prepared: PreparedMedia,
    scores: EngineOutputs | np.ndarray | Exception | None,
    manifest: EngineManifest,
    config: JudgeConfig,
) -> VerdictRecord:
    """Aggregate one job's engine outputs (or calibrated P(fake) per region) into its verdict, or turn its
    recorded failure into one."""
    if prepared.reused is not None:
        return _reused(prepared, config)
    common = _common(prepared, manifest, config)
    if prepared.outcome is not None:
        status, code, detail = prepared.outcome
        return VerdictRecord(status=status, code=code, detail=detail, **common)  # type: ignore[arg-type]
    if isinstance(scores, Exception) or scores is None:
        return VerdictRecord(status="error", code="inference_failed", detail=repr(scores), **common)
    return _scored(prepared, scores, manifest, config, common)


def _common(prepared: PreparedMedia, manifest: EngineManifest, config: JudgeConfig) -> dict[str, Any]:
    """What every verdict of the job says, whatever its status: the job, the engine, the media's facts."""
    facts = prepared.facts
    common: dict[str, Any] = dict(
        job_id=prepared.job.job_id,
        source=prepared.job.source,
        media_uri=prepared.job.uri,
        engine=engine_identity(manifest),
        media_sha256=prepared.media_sha256,
        threshold=manifest.threshold,
        aggregation=str(config.rule),
        min_track_fraction=config.min_track_fraction,
        masks_requested=config.masks,
        frames_requested=config.frames_per_video,
        frames_sampled=prepared.frames_sampled,
        timings_ms=dict(prepared.timings_ms),
        metadata=dict(prepared.job.metadata),
        decoder=prepared.decoder,
        decoder_note=prepared.decoder_note,
        content_credentials=prepared.credentials,
        judged_with=config.fingerprint,
        hashes=prepared.hashes,
        near_duplicates=prepared.near_duplicates,
    )
    if facts is not None:
        common.update(
            media_type=facts.media_type,
            container=facts.container,
            codec=facts.codec,
            width=facts.width,
            height=facts.height,
            fps=facts.fps,
            duration_s=facts.duration_s,
            size_bytes=facts.size_bytes,
        )
    return common


# What a re-upload's verdict takes over from the earlier one: the judgement and the facts of the same bytes.
_REUSED_FIELDS = (
    "status", "label", "p_fake", "class_probs", "threshold", "code", "detail", "aggregation", "frames_requested",
    "frames_sampled", "media_type", "container", "codec", "width", "height", "fps", "duration_s", "size_bytes",
    "content_credentials", "judged_with", "decisive_track_id", "decision", "manipulation",
)  # fmt: skip


def _reused(prepared: PreparedMedia, config: JudgeConfig) -> VerdictRecord:
    """An exact re-upload's own verdict: the earlier verdict's judgement, this job's id, URI, metadata and timings,
    ``reused_from`` naming the verdict (scores, tracks and masks stay with it). The rule's parameters and masks
    are this job's settings: a verdict is reused only under the same (``judged_with``)."""
    assert prepared.reused is not None
    earlier = prepared.reused.record
    job = prepared.job
    return VerdictRecord(
        job_id=job.job_id,
        source=job.source,
        media_uri=job.uri,
        engine=earlier.engine,
        media_sha256=prepared.media_sha256,
        timings_ms=dict(prepared.timings_ms),
        metadata=dict(job.metadata),
        reused_from=prepared.reused.verdict_id,
        min_track_fraction=config.min_track_fraction,
        masks_requested=config.masks,
        **{name: getattr(earlier, name) for name in _REUSED_FIELDS},
    )


def _scored(
    prepared: PreparedMedia,
    scores: EngineOutputs | np.ndarray,
    manifest: EngineManifest,
    config: JudgeConfig,
    common: dict[str, Any],
) -> VerdictRecord:
    """The ``ok`` verdict: per-region P(fake), aggregated by the rule, with frames, tracks and masks."""
    regions = prepared.regions
    per_region = region_scores(scores, manifest) if isinstance(scores, EngineOutputs) else RegionScores(scores)
    p = per_region.p_fake
    facts = prepared.facts
    frame_area = facts.width * facts.height if facts is not None else 0  # region boxes are in the media's pixels
    items = [
        ScoredItem(
            r.frame_index,
            float(p_r),
            r.track_id,
            confidence=r.box.confidence if r.box else None,
            area_fraction=r.box.width * r.box.height / frame_area if r.box and frame_area > 0 else None,
        )
        for r, p_r in zip(regions, p, strict=True)
    ]
    media = aggregate(items, config.rule, config.min_track_fraction)
    track_ids = [r.track_id for r in regions]
    class_probs = media_class_probs(per_region, manifest, track_ids, media.decisive_track, media.p_fake)
    frames = tuple(
        FrameScoreRecord(
            frame_index=r.frame_index,
            p_fake=float(p_r),
            pts_s=r.pts_s,
            face_index=r.face_index,
            track_id=r.track_id,
            box=(r.box.x0, r.box.y0, r.box.x1, r.box.y1) if r.box else None,
            face_confidence=r.box.confidence if r.box else None,
        )
        for r, p_r in zip(regions, p, strict=True)
    )
    tracks = tuple(
        TrackSummaryRecord(t.track_id, t.n_frames, t.p_fake, t.first_frame, t.last_frame) for t in media.tracks
    )
    masks = mask_records(
        per_region, [r.frame_index for r in regions], track_ids, config.max_masks if config.masks else 0
    )
    label = media_label(manifest, media.p_fake, class_probs)
    fake_class = manifest.task.kind == "multiclass" and fake_decision("ok", label)
    return VerdictRecord(
        status="ok",
        label=label,
        manipulation=label if fake_class else None,
        p_fake=media.p_fake,
        class_probs=class_probs,
        frames=frames,
        tracks=tracks,
        masks=masks,
        decisive_track_id=media.decisive_track,
        decision=media.decision,
        **common,
    )
