"""One job from its media to the engine's input: fetch → decode → regions → preprocess, each a stage module of
its own, run by the prepare workers ahead of inference. Every failure is recorded as the job's outcome (its
verdict later), never raised.

Frames decoded on the GPU (DALI) stay there through crops and preprocessing: ``pixels`` is then a CUDA tensor
the engine takes as it is; from PyAV it is a numpy array.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog

from deepsift.daemon.pipeline.decode import decode, decoder_note
from deepsift.daemon.pipeline.fetch import fetch
from deepsift.daemon.pipeline.provenance import content_credentials
from deepsift.daemon.pipeline.records import JudgeConfig, MediaJob, Outcome, PreparedMedia, ReusedVerdict
from deepsift.daemon.pipeline.regions import find_regions
from deepsift.daemon.pipeline.shadow import shadow_pixels
from deepsift.daemon.records import FrameHashRecord
from deepsift.engines.errors import PermanentError
from deepsift.engines.faces import FaceDetector
from deepsift.engines.manifest import EngineManifest
from deepsift.engines.media import MediaFacts
from deepsift.engines.perceptual import frame_hashes
from deepsift.engines.preprocess import InputContract, preprocess_batch

log = structlog.get_logger(__name__)


@dataclass
class _Progress:
    """What is known of a job so far: kept in its verdict when a later stage fails."""

    job: MediaJob
    sha256: str | None = None
    facts: MediaFacts | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def timed(self, stage: str, since: float) -> None:
        self.timings[stage] = round((time.perf_counter() - since) * 1000.0, 2)

    def failed(self, outcome: Outcome) -> PreparedMedia:
        return PreparedMedia(self.job, self.sha256, self.facts, timings_ms=self.timings, outcome=outcome)


Reuse = Callable[[str], ReusedVerdict | None]  # media sha256 → an earlier verdict of the same bytes to answer from


def prepare(
    job: MediaJob,
    manifest: EngineManifest,
    detector: FaceDetector | None,
    config: JudgeConfig,
    reuse: Reuse | None = None,
    shadows: Sequence[InputContract] = (),
) -> PreparedMedia:
    """Fetch, decode, find regions and preprocess one job for ``manifest``'s engine; failures are recorded.

    Once the media is hashed, ``reuse`` may name an earlier verdict of the same bytes: the job is then answered
    from it, and nothing is decoded. ``reuse`` runs outside the per-job guard: what it raises (the daemon stopping
    while the database is down) is not this job's verdict. ``shadows`` are the input contracts of the shadow
    engines: the same crops are given to each (``pipeline.shadow``)."""
    progress = _Progress(job)
    media = _guarded(progress, lambda: _fetch(progress, config))
    if isinstance(media, PreparedMedia):
        return media
    if reuse is not None and progress.sha256 is not None:
        t = time.perf_counter()
        earlier = reuse(progress.sha256)
        progress.timed("reuse_lookup", t)
        if earlier is not None:
            return PreparedMedia(job, progress.sha256, None, timings_ms=progress.timings, reused=earlier)
    return _guarded(progress, lambda: _stages(progress, media, manifest, detector, config, shadows))


T = TypeVar("T")


def _guarded(progress: _Progress, stage: Callable[[], T]) -> T | PreparedMedia:
    """The stage's result, or the job's recorded failure: nothing one job does ends the worker."""
    job = progress.job
    try:
        return stage()
    except PermanentError as e:
        return progress.failed(Outcome.error(e.code, e.detail))
    except MemoryError as e:  # an allocation the budgets did not foresee: this job's verdict, not the daemon's end
        log.error("prepare_out_of_memory", job_id=job.job_id, uri=job.uri)
        return progress.failed(Outcome.error("out_of_memory", repr(e)))
    except Exception as e:  # a bug or an unforeseen library failure: this job fails, the daemon does not
        log.exception("prepare_failed", job_id=job.job_id, uri=job.uri)
        return progress.failed(Outcome.error("internal_error", repr(e)))


def _fetch(progress: _Progress, config: JudgeConfig) -> Path | bytes:
    t = time.perf_counter()
    media, progress.sha256 = fetch(progress.job, config.max_media_bytes)
    progress.timed("fetch", t)
    return media


def _stages(
    progress: _Progress,
    media: Path | bytes,
    manifest: EngineManifest,
    detector: FaceDetector | None,
    config: JudgeConfig,
    shadows: Sequence[InputContract],
) -> PreparedMedia:
    credentials = None
    if config.signals.credentials:
        t = time.perf_counter()
        credentials = content_credentials(media, config.signals.trust_anchors)
        progress.timed("credentials", t)
    t = time.perf_counter()
    decoded = decode(media, config)
    progress.facts = decoded.facts
    progress.timed("decode", t)
    hashes: tuple[FrameHashRecord, ...] = ()
    if config.signals.perceptual_hashes:
        t = time.perf_counter()
        hashes = _hashes(progress.job, decoded.frames)
        progress.timed("hashes", t)
    known = {"decoder": decoded.decoder, "decoder_note": decoder_note(decoded), "hashes": hashes,
             "credentials": credentials}  # fmt: skip
    t = time.perf_counter()
    regions, crops = find_regions(decoded, manifest, detector, config.budget.detect_max_side)
    progress.timed("faces" if manifest.input.crop_mode == "face" else "regions", t)
    sampled = len(decoded.frames)
    if not regions:
        detail = f"no face with confidence > {manifest.input.min_face_confidence} in {sampled} frames"
        outcome = Outcome.abstained("no_face", detail)
        return PreparedMedia(progress.job, progress.sha256, progress.facts, sampled, timings_ms=progress.timings,
                             outcome=outcome, **known)  # fmt: skip
    t = time.perf_counter()
    pixels = preprocess_batch(crops, manifest.input)
    progress.timed("preprocess", t)
    if shadows:
        t = time.perf_counter()
        known["shadow_pixels"] = _shadow_pixels(progress.job, crops, pixels, manifest.input, shadows)
        progress.timed("shadow_preprocess", t)
    return PreparedMedia(progress.job, progress.sha256, progress.facts, sampled, tuple(regions), pixels,
                         progress.timings, **known)  # fmt: skip


def _shadow_pixels(
    job: MediaJob, crops: Sequence[Any], pixels: Any, serving: InputContract, shadows: Sequence[InputContract]
) -> tuple[Any, ...]:
    """The shadows' input batches; a failure (a shadow's larger input out of memory, a bug) leaves the job without
    shadow verdicts, never without its own."""
    try:
        return shadow_pixels(crops, pixels, serving, shadows)
    except Exception:  # MemoryError included
        log.exception("shadow_preprocess_failed", job_id=job.job_id)
        return (None,) * len(shadows)


def _hashes(job: MediaJob, frames: Sequence[Any]) -> tuple[FrameHashRecord, ...]:
    """Perceptual hashes of the frames; a failure is logged and leaves the job without them (a signal, not a
    judgement: the verdict goes on)."""
    try:
        return tuple(FrameHashRecord(index, value) for index, value in frame_hashes(frames))
    except Exception:
        log.exception("perceptual_hashes_failed", job_id=job.job_id)
        return ()
