"""The daemon's stages as small functions over frozen records: fetch → decode → faces → preprocess
(``prepare``, which runs ahead in a worker) and infer → aggregate → verdict (``judge``).

Every per-item failure becomes that item's error verdict; nothing here lets one bad file stop a batch.
Media over the judge's ``MediaBudget`` is refused from its header before decoding; large media is decoded
downscaled to the frame budget and searched for faces at ``detect_max_side`` (the memory ceiling of one job is
written down in ``engines.budgets``).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from deepsift.daemon.outputs import RegionScores, mask_records, media_class_probs, media_label, region_scores
from deepsift.daemon.records import EngineIdentity, FrameScoreRecord, TrackSummaryRecord, VerdictRecord
from deepsift.engines.aggregate import AggregationRule, ScoredItem, aggregate
from deepsift.engines.backends import EngineOutputs, LoadedEngine
from deepsift.engines.budgets import MediaBudget
from deepsift.engines.decoders import Decoder, named_decoder
from deepsift.engines.errors import MediaError, PermanentError
from deepsift.engines.faces import DETECT_MAX_SIDE, FaceBox, FaceDetector, crop_faces, min_face_size, scale_box
from deepsift.engines.manifest import EngineManifest, sha256_file
from deepsift.engines.media import DecodedMedia, MediaFacts
from deepsift.engines.preprocess import preprocess_batch

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class MediaJob:
    """One piece of media to judge: where it is and what to echo into its verdict."""

    job_id: str
    uri: str
    path: Path | None = None
    data: bytes | None = None
    source: str = "scan"
    known_sha256: str | None = None  # computed by the caller from the same bytes; fetch then skips hashing
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Region:
    """What one engine input was cut from: a whole frame, or one face in it."""

    frame_index: int
    pts_s: float | None
    face_index: int | None = None
    track_id: int | None = None
    box: FaceBox | None = None


@dataclass(frozen=True)
class PreparedMedia:
    """A job ready for the engine: its regions and their pixels, or the verdict it already earned."""

    job: MediaJob
    media_sha256: str | None
    facts: MediaFacts | None
    frames_sampled: int = 0
    regions: tuple[Region, ...] = ()
    pixels: np.ndarray | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    outcome: tuple[str, str, str] | None = None  # (status, code, detail) when no inference is needed
    decoder: str | None = None  # what decoded the frames (DecodedMedia.decoder)
    decoder_note: str | None = None  # why the preferred decoder was passed over (DecodedMedia.fallback_reason)
    # The engine it was prepared for (by its input contract); that engine scores it and names its verdict.
    engine: LoadedEngine | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class JudgeConfig:
    frames_per_video: int
    rule: AggregationRule
    min_track_fraction: float
    # Built once at start-up (engines.decoders.open_decoder); the name "pyav" stands for the stateless CPU decoder.
    decoder: Decoder = field(compare=False, repr=False)
    max_media_bytes: int
    masks: bool = False  # store tamper masks, where the engine makes them
    max_masks: int = 8  # masks per verdict: the most suspicious regions
    budget: MediaBudget = field(default_factory=MediaBudget)  # pixel, length and frame-memory limits of one job

    def __post_init__(self) -> None:
        if isinstance(self.decoder, str):
            object.__setattr__(self, "decoder", named_decoder(self.decoder))


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000.0, 2)


def fetch(job: MediaJob, max_bytes: int) -> tuple[Path | bytes, str]:
    """The media (a path, or bytes in memory) and its sha256; missing and oversized media are permanent errors."""
    if job.data is not None:
        if len(job.data) > max_bytes:
            raise MediaError("too_large", f"{len(job.data)} bytes > limit {max_bytes}")
        return job.data, hashlib.sha256(job.data).hexdigest()
    if job.path is None or not job.path.is_file():
        raise MediaError("not_found", f"no such file: {job.path}")
    size = os.path.getsize(job.path)
    if size > max_bytes:
        raise MediaError("too_large", f"{size} bytes > limit {max_bytes}")
    return job.path, job.known_sha256 or sha256_file(job.path)


def find_regions(
    decoded: DecodedMedia,
    manifest: EngineManifest,
    detector: FaceDetector | None,
    detect_max_side: int = DETECT_MAX_SIDE,
) -> tuple[list[Region], list[Any]]:
    """Regions and their RGB pixels: whole frames, or square face crops — as the manifest says.

    Faces are found by ``engines.faces.crop_faces`` (the trainer's code) on copies at most ``detect_max_side``
    long and cut from the decoded frames; region boxes are in the media's own pixels (``MediaFacts`` width and
    height), whatever size the frames were decoded at. Pixels stay where the decoder put them: numpy arrays from
    PyAV, CUDA tensors from DALI (crops included). Frames too small to hold a face the detector can find are
    ``too_small``.
    """
    frames = decoded.frames
    contract = manifest.input
    if contract.crop_mode == "full":
        return [Region(f.index, f.pts_s) for f in frames], [f.rgb for f in frames]
    if detector is None:
        raise RuntimeError("this engine crops faces but no face detector was given")
    _check_face_room(decoded, min_face_size(detector))
    frame_by_index = {f.index: f for f in frames}
    regions, crops = [], []
    for crop in crop_faces(frames, detector, contract.face_margin, detect_max_side):
        frame = frame_by_index[crop.frame_index]
        box = _in_media_pixels(crop.box, frame.rgb.shape, decoded.facts)
        regions.append(Region(frame.index, frame.pts_s, crop.face_index, crop.track_id, box))
        crops.append(crop.rgb)
    return regions, crops


def _check_face_room(decoded: DecodedMedia, smallest_face: int) -> None:
    height, width = (min(f.rgb.shape[i] for f in decoded.frames) for i in (0, 1))
    if min(height, width) < smallest_face:
        raise MediaError(
            "too_small",
            f"{decoded.facts.width}x{decoded.facts.height} media (frames {width}x{height}) is smaller than the "
            f"face detector's smallest face ({smallest_face} px)",
        )


def _in_media_pixels(box: FaceBox, frame_shape: tuple[int, ...], facts: MediaFacts) -> FaceBox:
    """A box in a decoded frame's pixels, in the media's own: they differ when the frame budget shrank the frame."""
    return scale_box(box, facts.width / frame_shape[1], facts.height / frame_shape[0])


def prepare(
    job: MediaJob, manifest: EngineManifest, detector: FaceDetector | None, config: JudgeConfig
) -> PreparedMedia:
    """Fetch, decode, find faces and preprocess one job; failures are recorded, never raised.

    Frames decoded on the GPU (DALI) stay there through crops and preprocessing: ``pixels`` is then a CUDA tensor
    the engine takes as it is; from PyAV it is a numpy array.
    """
    timings: dict[str, float] = {}
    sha, facts = None, None
    try:
        t = time.perf_counter()
        media, sha = fetch(job, config.max_media_bytes)
        timings["fetch"] = _ms(t)
        t = time.perf_counter()
        decoded = config.decoder(media, config.frames_per_video, budget=config.budget)
        facts = decoded.facts
        timings["decode"] = _ms(t)
        decoded_by = {"decoder": decoded.decoder, "decoder_note": decoder_note(decoded)}
        t = time.perf_counter()
        regions, crops = find_regions(decoded, manifest, detector, config.budget.detect_max_side)
        timings["faces" if manifest.input.crop_mode == "face" else "regions"] = _ms(t)
        if not regions:
            detail = f"no face with confidence > {manifest.input.min_face_confidence} in {len(decoded.frames)} frames"
            return PreparedMedia(
                job,
                sha,
                facts,
                len(decoded.frames),
                timings_ms=timings,
                outcome=("abstained", "no_face", detail),
                **decoded_by,
            )
        t = time.perf_counter()
        pixels = preprocess_batch(crops, manifest.input)
        timings["preprocess"] = _ms(t)
        return PreparedMedia(job, sha, facts, len(decoded.frames), tuple(regions), pixels, timings, **decoded_by)
    except PermanentError as e:
        return PreparedMedia(job, sha, facts, timings_ms=timings, outcome=("error", e.code, e.detail))
    except MemoryError as e:  # an allocation the budgets did not foresee: this job's verdict, not the daemon's end
        log.error("prepare_out_of_memory", job_id=job.job_id, uri=job.uri)
        return PreparedMedia(job, sha, facts, timings_ms=timings, outcome=("error", "out_of_memory", repr(e)))
    except Exception as e:  # a bug or an unforeseen library failure: this job fails, the daemon does not
        log.exception("prepare_failed", job_id=job.job_id, uri=job.uri)
        return PreparedMedia(job, sha, facts, timings_ms=timings, outcome=("error", "internal_error", repr(e)))


def decoder_note(decoded: DecodedMedia) -> str | None:
    """What the verdict says about decoding: why DALI was passed over, and ``downscaled:<scale>`` when the frame
    budget made the kept frames smaller than the media (e.g. ``frame_budget downscaled:0.567``)."""
    notes = [decoded.fallback_reason] if decoded.fallback_reason else []
    if decoded.scale < 1.0:
        notes.append(f"downscaled:{decoded.scale:.3g}")
    return " ".join(notes) or None


def infer(
    engine: LoadedEngine | None, batch: Sequence[PreparedMedia], masks: bool = False
) -> list[EngineOutputs | Exception]:
    """The engine outputs for each job with pixels, in order: each job scored by the engine it was prepared for
    (``engine`` for jobs prepared without one), one engine batch per engine and pixel placement (host numpy, or
    a GPU tensor from DALI). Mask outputs come along when ``masks`` (some job asked) and the engine makes them.
    If a batch fails, its jobs are retried one by one, so a failure stays with the job that caused it."""
    ready = [p for p in batch if p.pixels is not None]
    groups: dict[tuple[int, str], list[int]] = {}
    for i, p in enumerate(ready):
        groups.setdefault((id(p.engine or engine), _placement(p.pixels)), []).append(i)
    scored: dict[int, EngineOutputs | Exception] = {}
    for indices in groups.values():
        scorer, pixels = ready[indices[0]].engine or engine, [ready[i].pixels for i in indices]
        scored.update(zip(indices, _score(scorer, pixels, masks), strict=True))
    return [scored[i] for i in range(len(ready))]


def _placement(pixels: Any) -> str:
    return "numpy" if isinstance(pixels, np.ndarray) else f"{type(pixels).__name__}:{getattr(pixels, 'device', '')}"


def _score(engine: LoadedEngine | None, ready: Sequence[Any], masks: bool) -> list[EngineOutputs | Exception]:
    """One engine batch for several jobs' pixels (all numpy, or all tensors on one device); job by job if it fails."""
    if engine is None:
        return [RuntimeError("no engine to score this job")] * len(ready)
    try:
        outputs = engine.run(_concatenate(ready), masks=masks)
        offsets = np.cumsum([0] + [len(p) for p in ready])
        return [outputs.slice(a, b) for a, b in itertools.pairwise(offsets)]
    except Exception:
        log.exception("batch_inference_failed", jobs=len(ready), engine=engine.manifest.name,
                      version=engine.manifest.version)  # fmt: skip
    results: list[EngineOutputs | Exception] = []
    for pixels in ready:
        try:
            results.append(engine.run(pixels, masks=masks))
        except Exception as e:
            results.append(e)
    return results


def _concatenate(pixels: Sequence[Any]) -> Any:
    if isinstance(pixels[0], np.ndarray):
        return np.concatenate(pixels)
    import torch  # only GPU-decoded pixels are tensors; torch is loaded by then

    return torch.cat(list(pixels))


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
    facts = prepared.facts
    common: dict[str, Any] = dict(
        job_id=prepared.job.job_id,
        source=prepared.job.source,
        media_uri=prepared.job.uri,
        engine=engine_identity(manifest),
        media_sha256=prepared.media_sha256,
        threshold=manifest.threshold,
        aggregation=str(config.rule),
        frames_requested=config.frames_per_video,
        frames_sampled=prepared.frames_sampled,
        timings_ms=dict(prepared.timings_ms),
        metadata=dict(prepared.job.metadata),
        decoder=prepared.decoder,
        decoder_note=prepared.decoder_note,
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
    if prepared.outcome is not None:
        status, code, detail = prepared.outcome
        return VerdictRecord(status=status, code=code, detail=detail, **common)  # type: ignore[arg-type]
    if isinstance(scores, Exception) or scores is None:
        return VerdictRecord(status="error", code="inference_failed", detail=repr(scores), **common)
    regions = prepared.regions
    per_region = region_scores(scores, manifest) if isinstance(scores, EngineOutputs) else RegionScores(scores)
    p = per_region.p_fake
    items = [ScoredItem(r.frame_index, float(p_r), r.track_id) for r, p_r in zip(regions, p, strict=True)]
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
    return VerdictRecord(
        status="ok",
        label=media_label(manifest, media.p_fake, class_probs),
        p_fake=media.p_fake,
        class_probs=class_probs,
        frames=frames,
        tracks=tracks,
        masks=masks,
        **common,
    )
