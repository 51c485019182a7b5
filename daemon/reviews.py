"""Human reviews of verdicts, in SQL: ``daemon review add`` appends one, ``daemon review queue`` lists what is
worth a reviewer's time (the ``review_queue`` view of migration 0005).

A review says what the media really is: ``real`` or ``fake``, and for the verdicts of multi-class engines the
manipulation class (one of the engine's non-real classes). Reviews are append-only like verdicts; the newest
review of a job is its reviewed truth (``latest_verdicts.final_label``), and ``trainer export-reviews`` turns
reviewed media into a dataset for the next engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, column, select, table

from deepsift.daemon.db import session_factory, translate_outages
from deepsift.daemon.models import REVIEW_LABELS, EngineRow, Review, Verdict
from deepsift.daemon.repository import VerdictRepository, as_utc
from deepsift.daemon.storable import safe_text
from deepsift.engines.errors import DeepsiftError

QUEUE_REASONS = ("uncertain", "disagreement", "sample")
_QUEUE_COLUMNS = ("verdict_id", "job_id", "reason", "engine_name", "engine_version", "label", "p_fake", "threshold",
                  "media_uri", "media_sha256", "created_at")  # fmt: skip
# Typed, so SQLite's untyped view columns come back as Python values (times as datetimes).
_review_queue = table(
    "review_queue",
    *(column(name, Verdict.__table__.c[name].type) for name in _QUEUE_COLUMNS if name in Verdict.__table__.c),
    column("verdict_id", Verdict.__table__.c.id.type),
    column("reason", Verdict.__table__.c.label.type),
)


class ReviewRefused(DeepsiftError):
    """A review that cannot be recorded as given: no such verdict, a label or manipulation that does not fit."""


@dataclass(frozen=True)
class ReviewRecord:
    verdict_id: int
    job_id: str
    label: str  # real | fake
    reviewer: str
    manipulation: str | None = None
    note: str | None = None
    id: int | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class QueueItem:
    verdict_id: int
    job_id: str
    reason: str  # uncertain | disagreement | sample
    engine_name: str
    engine_version: int
    label: str | None
    p_fake: float | None
    threshold: float | None
    media_uri: str
    media_sha256: str | None
    created_at: datetime


class Reviews:
    """Append and read reviews; database outages surface as ``RetryableError``."""

    def __init__(self, repository: VerdictRepository) -> None:
        self._sessions = session_factory(repository.engine)

    def add(self, verdict_id: int, label: str, reviewer: str, manipulation: str | None = None,
            note: str | None = None) -> ReviewRecord:  # fmt: skip
        """Record a review of a stored verdict; ``ReviewRefused`` when it does not fit the verdict."""
        if label not in REVIEW_LABELS:
            raise ReviewRefused(f"a review's label is one of {', '.join(REVIEW_LABELS)}, not {label!r}")
        if not reviewer.strip():
            raise ReviewRefused("a review names its reviewer")
        with translate_outages(), self._sessions.begin() as session:
            verdict = session.get(Verdict, verdict_id)
            if verdict is None:
                raise ReviewRefused(f"no verdict {verdict_id}")
            _check_manipulation(label, manipulation, _engine_classes(session, verdict))
            row = Review(verdict_id=verdict_id, job_id=verdict.job_id, label=label, manipulation=_text(manipulation),
                         reviewer=safe_text(reviewer), note=_text(note))  # fmt: skip
            session.add(row)
            session.flush()
            return _record(row)

    def newest_serving_verdict(self, job_id: str) -> int:
        """The id of a job's newest serving verdict (the one ``latest_verdicts`` shows)."""
        query = (
            select(Verdict.id)
            .where(Verdict.job_id == safe_text(job_id), Verdict.role == "serving")
            .order_by(Verdict.id.desc())
            .limit(1)
        )
        with translate_outages(), self._sessions() as session:
            found = session.scalar(query)
        if found is None:
            raise ReviewRefused(f"no verdict for job {job_id!r}")
        return found

    def for_job(self, job_id: str) -> list[ReviewRecord]:
        """Every review of a job, oldest first (the last is its reviewed truth)."""
        query = select(Review).where(Review.job_id == safe_text(job_id)).order_by(Review.id)
        with translate_outages(), self._sessions() as session:
            return [_record(row) for row in session.scalars(query)]

    def queue(self, reason: str | None = None, limit: int = 50) -> list[QueueItem]:
        """Unreviewed verdicts worth a look, oldest first within each reason (uncertain, disagreement, sample)."""
        q = _review_queue.c
        by_reason = case({r: i for i, r in enumerate(QUEUE_REASONS)}, value=q.reason)
        query = select(*(q[name] for name in _QUEUE_COLUMNS)).order_by(by_reason, q.created_at, q.verdict_id)
        if reason is not None:
            query = query.where(q.reason == reason)
        with translate_outages(), self._sessions() as session:
            rows = session.execute(query.limit(limit)).all()
        return [QueueItem(**{**row._mapping, "created_at": as_utc(row.created_at)}) for row in rows]


def _engine_classes(session: Any, verdict: Verdict) -> list[str] | None:
    """The class names of the engine that made the verdict, if a daemon recorded it."""
    query = select(EngineRow.class_names).where(
        EngineRow.name == verdict.engine_name,
        EngineRow.version == verdict.engine_version,
        EngineRow.artifact_sha256 == verdict.engine_artifact_sha256,
    )
    return session.scalar(query)


def _check_manipulation(label: str, manipulation: str | None, classes: list[str] | None) -> None:
    """A fake judged by a multi-class engine names one of its non-real classes (its dataset row needs one); a
    binary engine's has none; for an engine no daemon recorded, any class is taken."""
    if label != "fake":
        if manipulation is not None:
            raise ReviewRefused("only a fake has a manipulation class")
        return
    if classes is None:
        return
    known = [c for c in classes if c != "real"]
    if len(classes) <= 2:
        if manipulation is not None:
            raise ReviewRefused("the verdict's engine is binary (real/fake): a review of it names no manipulation")
        return
    if manipulation not in known:
        raise ReviewRefused(f"a fake judged by a multi-class engine names its manipulation: one of {', '.join(known)}"
                            + ("" if manipulation is None else f", not {manipulation!r}"))  # fmt: skip


def _record(row: Review) -> ReviewRecord:
    return ReviewRecord(
        verdict_id=row.verdict_id, job_id=row.job_id, label=row.label, reviewer=row.reviewer,
        manipulation=row.manipulation, note=row.note, id=row.id,
        created_at=None if row.created_at is None else as_utc(row.created_at),
    )  # fmt: skip


def _text(value: str | None) -> str | None:
    return None if value is None else safe_text(value)
