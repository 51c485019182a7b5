"""Stage 2, one thread that scores: micro-batch frames across jobs, infer, aggregate, verdict (``judge``).

A batch closes when it holds ``max_frames`` frames or ``max_wait_s`` after its first job arrived,
whichever is first; a job is never split, and one bigger than a batch goes alone (the engine chunks it
to its own batch range). Jobs that need no inference (errors, judged before) ride along with the
next batch so they keep their place behind nothing slower than ``max_wait_s``. Each job is scored by the
engine it was prepared for and its verdict names that engine: a batch that spans an engine switch makes
one engine call per engine.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import structlog

from deepsift.daemon.pipeline import JudgeConfig, Outcome, PreparedMedia, engine_identity, infer, verdict
from deepsift.daemon.pipeline.shadow import shadow_verdicts
from deepsift.daemon.records import VerdictRecord
from deepsift.daemon.stream.metrics import StreamMetrics
from deepsift.daemon.stream.work import Judged, Work, put, take
from deepsift.engines.backends import EngineOutputs, LoadedEngine
from deepsift.engines.manifest import EngineManifest

log = structlog.get_logger(__name__)

DETAIL_CHARS = 1000  # of an unexpected error's repr in a verdict

# Turns a prepared job and its engine outputs into its verdict: ``pipeline.verdict``, or a wrapper around it.
Judge = Callable[[PreparedMedia, EngineOutputs | Exception | None, EngineManifest, JudgeConfig], VerdictRecord]


class MicroBatcher:
    """Pulls ``Work`` from a queue into batches of at most ``max_frames`` frames."""

    def __init__(self, inbox: queue.Queue, max_frames: int, max_wait_s: float, stop: threading.Event) -> None:
        self._inbox = inbox
        self._max_frames = max_frames
        self._max_wait_s = max_wait_s
        self._stop = stop
        self._carry: Work | None = None

    def next_batch(self) -> list[Work] | None:
        """The next batch, or None when the stage must end."""
        first = self._carry if self._carry is not None else take(self._inbox, self._stop)
        self._carry = None
        if not isinstance(first, Work):
            return None
        batch, frames = [first], first.frames
        deadline = time.monotonic() + self._max_wait_s
        while frames < self._max_frames:
            item = take(self._inbox, self._stop, timeout=max(0.0, deadline - time.monotonic()))
            if item is None:
                break
            if not isinstance(item, Work):
                return batch  # stopping: this batch still finishes
            if frames + item.frames > self._max_frames:
                self._carry = item
                break
            batch.append(item)
            frames += item.frames
        return batch


def judge_batch(
    engine: LoadedEngine,
    batch: Sequence[Work],
    metrics: StreamMetrics,
    judge: Judge = verdict,
    shadows: Sequence[LoadedEngine] = (),
) -> list[Judged]:
    """One engine call per engine for the batch's pixels, then one verdict per job (None for jobs judged before),
    and each shadow engine's verdicts beside them (one call per shadow engine).

    Jobs are scored by the engine they were prepared for; ``engine`` (the serving one) judges any prepared
    without one. Whatever fails, each job gets a verdict of its own: the stage never ends over one job."""
    prepared = [w.prepared for w in batch if w.prepared is not None]
    frames = sum(w.frames for w in batch)
    started = time.perf_counter()
    scores = iter(_infer(engine, prepared, masks=any(w.config.masks for w in batch)))
    infer_ms = round((time.perf_counter() - started) * 1000.0, 2)
    if frames:
        metrics.stage_seconds.labels(stage="infer").observe(infer_ms / 1000.0)
        metrics.batch_frames.observe(frames)
        metrics.batch_jobs.observe(sum(1 for w in batch if w.frames))
    judged = []
    for work in batch:
        if work.prepared is None:
            judged.append(Judged(work, None))
            continue
        has_pixels = work.prepared.pixels is not None
        record = _verdict(work, next(scores, None) if has_pixels else None, engine, judge)
        if has_pixels:
            record = replace(record, timings_ms={**record.timings_ms, "infer": infer_ms, "batch_frames": frames})
        judged.append(Judged(work, record))
    return _with_shadows(judged, shadows, metrics, judge) if shadows else judged


def _with_shadows(
    judged: list[Judged], shadows: Sequence[LoadedEngine], metrics: StreamMetrics, judge: Judge
) -> list[Judged]:
    """Each job's shadow verdicts: one engine call per shadow for the batch's shadow pixels. A shadow that fails
    is that shadow's error verdict; a bug here costs the jobs their shadow verdicts, never their serving ones."""
    jobs = [j for j in judged if j.record is not None and j.work.prepared is not None]
    outputs: list[list[EngineOutputs | Exception | None]] = [[None] * len(shadows) for _ in jobs]
    for i, shadow in enumerate(shadows):
        scored = [(k, j.work.prepared) for k, j in enumerate(jobs) if _shadow_batch(j.work.prepared, i) is not None]
        if not scored:
            continue
        started = time.perf_counter()
        ready = [replace(p, pixels=_shadow_batch(p, i), engine=shadow) for _, p in scored]
        for (k, _), out in zip(scored, _infer(shadow, ready, masks=False), strict=True):
            outputs[k][i] = out
        metrics.stage_seconds.labels(stage="shadow_infer").observe(time.perf_counter() - started)
    result = {id(j): j for j in judged}
    for k, j in enumerate(jobs):
        assert j.work.prepared is not None
        try:
            records = shadow_verdicts(j.work.prepared, shadows, outputs[k], j.work.config, judge)
        except Exception:
            log.exception("shadow_verdicts_failed", job_id=j.work.job_id)
            continue
        result[id(j)] = replace(j, shadows=records)
    return [result[id(j)] for j in judged]


def _shadow_batch(prepared: PreparedMedia | None, i: int) -> object | None:
    if prepared is None or prepared.pixels is None or i >= len(prepared.shadow_pixels):
        return None
    return prepared.shadow_pixels[i]


def _infer(engine: LoadedEngine, prepared: list[PreparedMedia], masks: bool) -> list[EngineOutputs | Exception]:
    """The engine outputs per job with pixels; if the call itself raises, that is each such job's failure."""
    try:
        return infer(engine, prepared, masks=masks)
    except Exception as e:  # infer already isolates failing jobs: this is a bug around the engine calls
        log.exception("infer_failed", jobs=len(prepared))
        return [e] * sum(1 for p in prepared if p.pixels is not None)


def _verdict(work: Work, scores: EngineOutputs | Exception | None, engine: LoadedEngine, judge: Judge) -> VerdictRecord:
    """One job's verdict; a failure here (a bug) is that job's error verdict, never the batch's or the daemon's."""
    assert work.prepared is not None
    manifest = (work.prepared.engine or engine).manifest
    try:
        return judge(work.prepared, scores, manifest, work.config)
    except Exception as e:
        log.exception("verdict_failed", job_id=work.job_id)
        error = e
    failed = replace(work.prepared, regions=(), pixels=None, outcome=Outcome.error("internal_error", _describe(error)))
    try:
        return verdict(failed, None, manifest, work.config)
    except Exception:  # even the error verdict cannot be built from what the job holds: build it bare
        log.exception("error_verdict_failed", job_id=work.job_id)
        return _bare_error(work.prepared, manifest, _describe(error))


def _bare_error(prepared: PreparedMedia, manifest: EngineManifest, detail: str) -> VerdictRecord:
    """An ``internal_error`` verdict from the job's id and media URI alone."""
    job = prepared.job
    return VerdictRecord(
        job_id=job.job_id, source=job.source, media_uri=job.uri, status="error", engine=engine_identity(manifest),
        code="internal_error", detail=detail,
    )  # fmt: skip


def _describe(error: Exception) -> str:
    try:
        return repr(error)[:DETAIL_CHARS]
    except Exception:  # an exception whose repr raises
        return type(error).__name__


def batch_worker(
    batcher: MicroBatcher,
    outbox: queue.Queue,
    engines: Callable[[], LoadedEngine],
    metrics: StreamMetrics,
    stop: threading.Event,
    judge: Judge = verdict,
    shadows: Sequence[LoadedEngine] = (),
) -> None:
    """Thread body: batches until the daemon stops."""
    while (batch := batcher.next_batch()) is not None:
        for judged in judge_batch(engines(), batch, metrics, judge, shadows):
            if not put(outbox, judged, stop):
                return
