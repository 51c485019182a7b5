"""Upload signals in the prepare stage, where the verdict store is at hand: an exact re-upload is answered from
the earlier verdict of the same bytes (``daemon.uploads.UploadHistory.reusable``: no decode, no engine), and a
job's perceptual hashes are looked up for near-duplicates before it is judged. Both retry while the database
is down, like every look-up that decides what a job becomes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, TypeVar

import structlog

from deepsift.daemon.pipeline import JudgeConfig, PreparedMedia, engine_identity
from deepsift.daemon.pipeline.prepare import Reuse
from deepsift.daemon.stream.retry import Abandoned, retry_forever
from deepsift.engines.backends import LoadedEngine

if TYPE_CHECKING:
    from deepsift.daemon.stream.prepare import PrepareContext

T = TypeVar("T")

log = structlog.get_logger(__name__)


def reuse_lookup(context: PrepareContext, engine: LoadedEngine, config: JudgeConfig, job_id: str) -> Reuse | None:
    """The look-up ``pipeline.prepare`` runs once it has the media's sha256; None when re-uploads are judged anew
    (reuse off, or the job wants masks this engine makes: those are not copied from the earlier verdict)."""
    history = context.history
    if history is None or not context.reuse.enabled:
        return None
    if config.masks and engine.manifest.outputs.mask_logits is not None:
        return None
    identity, judged_with, policy = engine_identity(engine.manifest), config.fingerprint, context.reuse
    return lambda sha: _with_database(lambda: history.reusable(sha, identity, judged_with, policy), context, job_id)


def with_near_duplicates(prepared: PreparedMedia, context: PrepareContext) -> PreparedMedia:
    """The job with its links to earlier verdicts of perceptually similar media (none without hashes)."""
    history = context.history
    if history is None or not context.near.enabled or not prepared.hashes:
        return prepared
    job_id, sha = prepared.job.job_id, prepared.media_sha256
    try:
        links = _with_database(lambda: history.near_duplicates(prepared.hashes, context.near, sha), context, job_id)
    except Abandoned:
        raise
    except Exception:  # a bug or a query the database refuses: the job goes on without links (a signal)
        log.exception("near_duplicates_failed", job_id=job_id)
        return prepared
    return replace(prepared, near_duplicates=links) if links else prepared


def _with_database(operation: Callable[[], T], context: PrepareContext, job_id: str) -> T:
    return retry_forever(operation, dependency="database", stop=context.stop, watch=context.watch, job_id=job_id)
