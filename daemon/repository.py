"""Verdicts in and out of SQL: the only module that turns ``daemon.records`` into rows and back.

Saving is idempotent per (job, engine name, engine version), so a Kafka re-delivery after a crash
between the SQL commit and the offset commit stores nothing twice. The unique constraint decides
races between daemons, not a read-then-write check.

Saving a job's shadow verdicts goes with its serving verdict, in one transaction; a job is judged once per
engine version, whatever the role. Every text and JSON value is made storable on the way in
(``daemon.storable``). ``is_fake`` is written from the record's label (``VerdictRecord.is_fake``), so the column
and the label cannot disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import Engine, column, func, select, table
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session, selectinload

from deepsift.daemon.db import session_factory, translate_outages
from deepsift.daemon.models import (
    EngineRow,
    Verdict,
    VerdictFrame,
    VerdictHash,
    VerdictMask,
    VerdictNearDuplicate,
    VerdictTrack,
)
from deepsift.daemon.records import (
    EngineIdentity,
    FrameHashRecord,
    FrameScoreRecord,
    MaskRecord,
    NearDuplicateRecord,
    TrackSummaryRecord,
    VerdictRecord,
)
from deepsift.daemon.storable import safe_json, safe_text, storable
from deepsift.engines.manifest import EngineManifest
from deepsift.engines.perceptual import chunks, signed, unsigned

log = structlog.get_logger(__name__)

# The view the migration creates; only its key columns are needed to pick rows from ``verdicts``.
_latest_verdicts = table("latest_verdicts", column("id"), column("job_id"))

# Columns copied one to one between VerdictRecord and Verdict.
_PLAIN_FIELDS = (
    "job_id",
    "source",
    "media_uri",
    "status",
    "media_sha256",
    "media_type",
    "label",
    "p_fake",
    "class_probs",
    "threshold",
    "code",
    "detail",
    "aggregation",
    "frames_requested",
    "frames_sampled",
    "container",
    "codec",
    "width",
    "height",
    "fps",
    "duration_s",
    "size_bytes",
    "timings_ms",
    "decoder",
    "decoder_note",
    "reused_from",
    "content_credentials",
    "judged_with",
    "role",
    "decisive_track_id",
    "decision",
    "manipulation",
    "min_track_fraction",
    "masks_requested",
)


@dataclass(frozen=True)
class SavedVerdict:
    """Where a verdict landed; ``created`` is False when the job was already judged by this engine."""

    id: int
    created: bool


class VerdictRepository:
    """Append-only store of verdicts; database outages surface as ``RetryableError``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine  # the database engine, for stores that share its connections (daemon.attempts)
        self._sessions = session_factory(engine)

    def save(self, record: VerdictRecord, shadows: Sequence[VerdictRecord] = ()) -> SavedVerdict:
        """Insert the verdict and its children in one transaction, or return the row already there. ``shadows``
        (shadow engines' verdicts of the same job) go in the same transaction: a job has all or none of them."""
        with translate_outages():
            existing = self.find_id(record.job_id, record.engine)
            if existing is not None:
                return SavedVerdict(existing, created=False)
            try:
                return SavedVerdict(self._insert(record, shadows), created=True)
            except IntegrityError:
                # Another daemon won the race for the unique key; its row is the answer.
                existing = self.find_id(record.job_id, record.engine)
                if existing is None:
                    raise
                return SavedVerdict(existing, created=False)

    def find_id(self, job_id: str, engine: EngineIdentity) -> int | None:
        """The id of this engine's verdict for the job, so a re-delivered job can skip inference."""
        query = select(Verdict.id).where(
            Verdict.job_id == safe_text(job_id),  # as ``save`` stored it
            Verdict.engine_name == safe_text(engine.name),
            Verdict.engine_version == engine.version,
        )
        with translate_outages(), self._sessions() as session:
            return session.scalar(query)

    def get(self, verdict_id: int) -> VerdictRecord:
        """The stored verdict with its children in insertion order; KeyError when there is none."""
        with translate_outages(), self._sessions() as session:
            row = session.get(Verdict, verdict_id, options=_WITH_CHILDREN)
            if row is None:
                raise KeyError(verdict_id)
            return _to_record(row)

    def latest_for_job(self, job_id: str) -> VerdictRecord | None:
        """The newest verdict for a job across engines, as the ``latest_verdicts`` view defines it."""
        latest = _latest_verdicts.c
        newest_id = select(latest.id).where(latest.job_id == safe_text(job_id)).scalar_subquery()
        query = select(Verdict).where(Verdict.id == newest_id).options(*_WITH_CHILDREN)
        with translate_outages(), self._sessions() as session:
            row = session.scalar(query)
            return None if row is None else _to_record(row)

    def ids_for_job(self, job_id: str) -> list[int]:
        """The ids of every verdict stored for a job (each engine, each re-scoring), newest first."""
        query = select(Verdict.id).where(Verdict.job_id == safe_text(job_id)).order_by(Verdict.id.desc())
        with translate_outages(), self._sessions() as session:
            return list(session.scalars(query))

    def engine_manifest(self, engine: EngineIdentity) -> EngineManifest | None:
        """The manifest of the engine a verdict names, if a daemon recorded it (``record_engine``)."""
        query = select(EngineRow.manifest).where(*_engine_is(engine.name, engine.version, engine.artifact_sha256))
        with translate_outages(), self._sessions() as session:
            document = session.scalar(query)
            return None if document is None else EngineManifest.model_validate(document)

    def ping(self) -> None:
        """Raise ``RetryableError`` when the database cannot be reached (readiness checks)."""
        with translate_outages(), self._sessions() as session:
            session.execute(select(1))

    def count(self) -> int:
        """Number of verdict rows, every engine and re-scoring included."""
        with translate_outages(), self._sessions() as session:
            return session.scalar(select(func.count()).select_from(Verdict)) or 0

    def record_engine(self, manifest: EngineManifest) -> bool:
        """Record an engine the daemon serves, so verdicts can be joined to it; True if it was new here."""
        with translate_outages():
            if self._engine_id(manifest) is not None:
                return False
            try:
                with self._sessions.begin() as session:
                    session.add(_engine_row(manifest))
                return True
            except IntegrityError:  # another daemon recorded it first
                if self._engine_id(manifest) is None:
                    raise
                return False

    def engine_manifests(self) -> list[EngineManifest]:
        """Every engine recorded, oldest first."""
        with translate_outages(), self._sessions() as session:
            rows = session.scalars(select(EngineRow.manifest).order_by(EngineRow.id))
            return [EngineManifest.model_validate(row) for row in rows]

    def _engine_id(self, manifest: EngineManifest) -> int | None:
        query = select(EngineRow.id).where(*_engine_is(manifest.name, manifest.version, manifest.artifact_sha256))
        with self._sessions() as session:
            return session.scalar(query)

    def _insert(self, record: VerdictRecord, shadows: Sequence[VerdictRecord] = ()) -> int:
        with self._sessions.begin() as session:
            row = _to_row(record)
            session.add(row)
            session.flush()
            for shadow in shadows:
                _insert_shadow(session, shadow)
            return row.id


def _insert_shadow(session: Session, shadow: VerdictRecord) -> None:
    """A shadow verdict beside its job's serving one, unless that engine judged the job before (a job is judged
    once per engine version, whatever the role: a re-scan by another serving engine keeps the shadow's first
    verdict). A shadow row the database refuses is left out; it never costs the serving verdict."""
    judged = select(Verdict.id).where(
        Verdict.job_id == safe_text(shadow.job_id),
        Verdict.engine_name == safe_text(shadow.engine.name),
        Verdict.engine_version == shadow.engine.version,
    )
    if session.scalar(judged) is not None:
        return
    try:
        with session.begin_nested():
            session.add(_to_row(shadow))
    except (IntegrityError, DataError) as e:
        log.warning("shadow_verdict_refused", job_id=shadow.job_id, engine=shadow.engine.name, error=str(e.orig))


_WITH_CHILDREN = (
    selectinload(Verdict.frames),
    selectinload(Verdict.tracks),
    selectinload(Verdict.masks),
    selectinload(Verdict.hashes),
    selectinload(Verdict.near_duplicates),
)


def _engine_is(name: str, version: int, artifact_sha256: str) -> tuple[Any, ...]:
    """The conditions naming one engine row (as ``save`` and ``record_engine`` store text)."""
    return (
        EngineRow.name == safe_text(name),
        EngineRow.version == version,
        EngineRow.artifact_sha256 == safe_text(artifact_sha256),
    )


def _engine_row(manifest: EngineManifest) -> EngineRow:
    backend = manifest.backend
    return EngineRow(
        name=manifest.name,
        version=manifest.version,
        artifact_sha256=manifest.artifact_sha256,
        recipe=manifest.recipe,
        recipe_sha256=manifest.recipe_sha256,
        detector=manifest.detector,
        task_kind=manifest.task.kind,
        class_names=list(manifest.task.class_names),
        backend=backend.name,
        backend_version=backend.version,
        precision=backend.precision,
        weights_sha256=manifest.weights_sha256,
        threshold=manifest.threshold,
        calibration=manifest.calibration.model_dump(mode="json"),
        evaluation=dict(manifest.evaluation),
        manifest=manifest.model_dump(mode="json"),
        built_at=manifest.built_at,
    )


def _to_row(record: VerdictRecord) -> Verdict:
    """Flatten the record: engine identity into three columns, boxes into x0..y1, children into rows; every
    text and JSON value made storable."""
    row = Verdict(
        **{name: storable(getattr(record, name)) for name in _PLAIN_FIELDS},
        engine_name=safe_text(record.engine.name),
        engine_version=record.engine.version,
        engine_artifact_sha256=safe_text(record.engine.artifact_sha256),
        is_fake=record.is_fake,
        submitted_at=None if record.submitted_at is None else as_utc(record.submitted_at),
        job_metadata=safe_json(record.metadata),
        frames=[_frame_row(frame) for frame in record.frames],
        tracks=[_track_row(track) for track in record.tracks],
        masks=[_mask_row(mask) for mask in record.masks],
        hashes=[_hash_row(h) for h in record.hashes],
        near_duplicates=[_near_duplicate_row(link) for link in record.near_duplicates],
    )
    if record.created_at is not None:
        row.created_at = as_utc(record.created_at)
    return row


def _frame_row(frame: FrameScoreRecord) -> VerdictFrame:
    x0, y0, x1, y1 = frame.box if frame.box is not None else (None, None, None, None)
    return VerdictFrame(
        frame_index=frame.frame_index,
        pts_s=frame.pts_s,
        face_index=frame.face_index,
        track_id=frame.track_id,
        x0=x0,
        y0=y0,
        x1=x1,
        y1=y1,
        face_confidence=frame.face_confidence,
        p_fake=frame.p_fake,
    )


def _track_row(track: TrackSummaryRecord) -> VerdictTrack:
    return VerdictTrack(
        track_id=track.track_id,
        n_frames=track.n_frames,
        p_fake=track.p_fake,
        first_frame=track.first_frame,
        last_frame=track.last_frame,
    )


def _mask_row(mask: MaskRecord) -> VerdictMask:
    return VerdictMask(
        frame_index=mask.frame_index, track_id=mask.track_id, width=mask.width, height=mask.height, png=mask.png
    )


def _hash_row(frame_hash: FrameHashRecord) -> VerdictHash:
    c0, c1, c2, c3 = chunks(frame_hash.phash)
    return VerdictHash(frame_index=frame_hash.frame_index, phash=signed(frame_hash.phash), c0=c0, c1=c1, c2=c2, c3=c3)


def _near_duplicate_row(link: NearDuplicateRecord) -> VerdictNearDuplicate:
    return VerdictNearDuplicate(
        earlier_verdict_id=link.earlier_verdict_id,
        distance=link.distance,
        matching_frames=link.matching_frames,
        frames_compared=link.frames_compared,
    )


def _to_record(row: Verdict) -> VerdictRecord:
    """Rebuild the frozen record; ``created_at`` always comes back timezone-aware (UTC)."""
    return VerdictRecord(
        **{name: getattr(row, name) for name in _PLAIN_FIELDS},
        engine=EngineIdentity(row.engine_name, row.engine_version, row.engine_artifact_sha256),
        metadata=row.job_metadata,
        created_at=as_utc(row.created_at),
        submitted_at=None if row.submitted_at is None else as_utc(row.submitted_at),
        frames=tuple(_frame_record(frame) for frame in row.frames),
        tracks=tuple(_track_record(track) for track in row.tracks),
        masks=tuple(_mask_record(mask) for mask in row.masks),
        hashes=tuple(FrameHashRecord(h.frame_index, unsigned(h.phash)) for h in row.hashes),
        near_duplicates=tuple(
            NearDuplicateRecord(n.earlier_verdict_id, n.distance, n.matching_frames, n.frames_compared)
            for n in row.near_duplicates
        ),
    )


def _frame_record(row: VerdictFrame) -> FrameScoreRecord:
    box = (row.x0, row.y0, row.x1, row.y1)
    return FrameScoreRecord(
        frame_index=row.frame_index,
        p_fake=row.p_fake,
        pts_s=row.pts_s,
        face_index=row.face_index,
        track_id=row.track_id,
        box=None if any(edge is None for edge in box) else box,
        face_confidence=row.face_confidence,
    )


def _track_record(row: VerdictTrack) -> TrackSummaryRecord:
    return TrackSummaryRecord(row.track_id, row.n_frames, row.p_fake, row.first_frame, row.last_frame)


def _mask_record(row: VerdictMask) -> MaskRecord:
    return MaskRecord(row.frame_index, row.png, row.width, row.height, row.track_id)


def as_utc(moment: datetime) -> datetime:
    """SQLite keeps no zone (its CURRENT_TIMESTAMP is UTC); store and return UTC on both dialects."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
