"""The daemon's SQL schema as SQLAlchemy ORM models: one verdict row and its append-only children, the
engines that made them, and the small record of deliveries started (the poison-job guard).

These classes mirror ``alembic/versions``; the migrations create the schema, and a test compares the
two so they cannot drift. Only ``daemon.repository`` (verdicts, engines), ``daemon.uploads`` (re-upload and
near-duplicate look-ups), ``daemon.attempts`` (``job_attempts``), ``daemon.reviews`` (``reviews``) and
``daemon.promotions`` (``engine_promotions``) should touch them; the rest of the daemon speaks ``daemon.records``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeEngine

# Deterministic constraint names, so SQLite and PostgreSQL agree and migrations can name what they drop.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

VERDICT_STATUSES = ("ok", "abstained", "error")
VERDICT_ROLES = ("serving", "shadow")
REVIEW_LABELS = ("real", "fake")

# BIGINT on PostgreSQL; plain INTEGER on SQLite, because only "INTEGER PRIMARY KEY" autoincrements there.
RowId = BigInteger().with_variant(Integer(), "sqlite")


def json_document() -> TypeEngine[Any]:
    """JSONB on PostgreSQL (indexable for analysts), JSON elsewhere; Python None is stored as SQL NULL."""
    return JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Verdict(Base):
    """One judgement of one piece of media by one engine; never updated, re-scoring adds a row."""

    __tablename__ = "verdicts"
    __table_args__ = (
        UniqueConstraint("job_id", "engine_name", "engine_version", name="uq_verdicts_job_engine"),
        CheckConstraint("status IN ('ok', 'abstained', 'error')", name="status"),
        CheckConstraint("role IN ('serving', 'shadow')", name="role"),  # PostgreSQL only (migration 0005)
        # (job_id, id) serves both job look-ups and "newest verdict per job" without touching the heap.
        Index("ix_verdicts_job_id_id", "job_id", "id"),
        Index("ix_verdicts_media_sha256_engine", "media_sha256", "engine_name", "engine_version"),  # re-uploads
        # Analysts' questions at millions of rows (migration 0007): one engine version over time; the uploader;
        # any metadata key by containment (a GIN index, PostgreSQL only: written as an expression, which the model
        # comparison skips on SQLite); the newest serving verdict per job.
        Index("ix_verdicts_engine_name_engine_version_created_at", "engine_name", "engine_version", "created_at"),
        Index("ix_verdicts_uploader", text("(job_metadata ->> 'uploader')")),
        Index("ix_verdicts_job_metadata", text("job_metadata jsonb_path_ops"), postgresql_using="gin").ddl_if(
            dialect="postgresql"
        ),
        Index(
            "ix_verdicts_serving_job_id_id",
            "job_id",
            "id",
            postgresql_where=text("role = 'serving'"),
            sqlite_where=text("role = 'serving'"),
        ),
    )

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(Text)
    media_uri: Mapped[str] = mapped_column(Text)
    media_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    media_type: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), index=True)
    label: Mapped[str | None] = mapped_column(Text)
    p_fake: Mapped[float | None] = mapped_column(Double)
    class_probs: Mapped[dict[str, float] | None] = mapped_column(json_document())
    threshold: Mapped[float | None] = mapped_column(Double)
    code: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[str | None] = mapped_column(Text)
    engine_name: Mapped[str] = mapped_column(Text)
    engine_version: Mapped[int] = mapped_column(Integer)
    engine_artifact_sha256: Mapped[str] = mapped_column(String(64))
    aggregation: Mapped[str | None] = mapped_column(Text)
    frames_requested: Mapped[int | None] = mapped_column(Integer)
    frames_sampled: Mapped[int | None] = mapped_column(Integer)
    container: Mapped[str | None] = mapped_column(Text)
    codec: Mapped[str | None] = mapped_column(Text)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    fps: Mapped[float | None] = mapped_column(Double)
    duration_s: Mapped[float | None] = mapped_column(Double)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    timings_ms: Mapped[dict[str, float]] = mapped_column(json_document())
    job_metadata: Mapped[dict[str, Any]] = mapped_column(json_document())
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now(), index=True)
    decoder: Mapped[str | None] = mapped_column(Text)  # pyav | dali (migration 0002)
    decoder_note: Mapped[str | None] = mapped_column(Text)  # why DALI was passed over; downscaled:<scale>
    reused_from: Mapped[int | None] = mapped_column(RowId)  # verdicts.id an exact re-upload took over (0004)
    content_credentials: Mapped[dict[str, Any] | None] = mapped_column(json_document())  # C2PA summary (0004)
    judged_with: Mapped[str | None] = mapped_column(String(64))  # sha256 of the judge settings (0004)
    role: Mapped[str] = mapped_column(String(16), server_default="serving")  # serving | shadow (0005)
    decisive_track_id: Mapped[int | None] = mapped_column(Integer)  # the track that decided P(fake) (0006)
    decision: Mapped[str | None] = mapped_column(Text)  # how: max_of_covered_tracks | coverage_weighted_fallback
    # Migration 0008: the facts a verdict carries and the decision to filter on.
    submitted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # Kafka record time; scan start
    min_track_fraction: Mapped[float | None] = mapped_column(Double)  # the aggregation rule's parameter
    masks_requested: Mapped[bool | None] = mapped_column(Boolean)
    is_fake: Mapped[bool | None] = mapped_column(Boolean)  # None: decides nothing (error, abstained, uncertain)
    manipulation: Mapped[str | None] = mapped_column(Text)  # a multi-class engine's fake class; None otherwise

    frames: Mapped[list[VerdictFrame]] = relationship(order_by="VerdictFrame.id")
    tracks: Mapped[list[VerdictTrack]] = relationship(order_by="VerdictTrack.id")
    masks: Mapped[list[VerdictMask]] = relationship(order_by="VerdictMask.id")
    hashes: Mapped[list[VerdictHash]] = relationship(order_by="VerdictHash.id")
    near_duplicates: Mapped[list[VerdictNearDuplicate]] = relationship(
        order_by="VerdictNearDuplicate.id", foreign_keys="VerdictNearDuplicate.verdict_id"
    )


class VerdictFrame(Base):
    """Score of one sampled frame, or of one face in it; the box is in source pixels."""

    __tablename__ = "verdict_frames"

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    verdict_id: Mapped[int] = mapped_column(RowId, ForeignKey("verdicts.id"), index=True)
    frame_index: Mapped[int] = mapped_column(Integer)
    pts_s: Mapped[float | None] = mapped_column(Double)
    face_index: Mapped[int | None] = mapped_column(Integer)
    track_id: Mapped[int | None] = mapped_column(Integer)
    x0: Mapped[float | None] = mapped_column(Double)
    y0: Mapped[float | None] = mapped_column(Double)
    x1: Mapped[float | None] = mapped_column(Double)
    y1: Mapped[float | None] = mapped_column(Double)
    face_confidence: Mapped[float | None] = mapped_column(Double)
    p_fake: Mapped[float] = mapped_column(Double)


class VerdictTrack(Base):
    """Summary of one face track across the sampled frames of a video."""

    __tablename__ = "verdict_tracks"

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    verdict_id: Mapped[int] = mapped_column(RowId, ForeignKey("verdicts.id"), index=True)
    track_id: Mapped[int] = mapped_column(Integer)
    n_frames: Mapped[int] = mapped_column(Integer)
    p_fake: Mapped[float] = mapped_column(Double)
    first_frame: Mapped[int] = mapped_column(Integer)
    last_frame: Mapped[int] = mapped_column(Integer)


class VerdictMask(Base):
    """A manipulation mask (PNG) for one frame, from detectors that localise."""

    __tablename__ = "verdict_masks"

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    verdict_id: Mapped[int] = mapped_column(RowId, ForeignKey("verdicts.id"), index=True)
    frame_index: Mapped[int] = mapped_column(Integer)
    track_id: Mapped[int | None] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    png: Mapped[bytes] = mapped_column(LargeBinary)


class VerdictHash(Base):
    """The 64-bit perceptual hash of one judged image or sampled frame, and its four 16-bit chunks, each indexed:
    every hash within Hamming distance d shares at least one chunk within d // 4 bits (multi-index hashing)."""

    __tablename__ = "verdict_hashes"

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    verdict_id: Mapped[int] = mapped_column(RowId, ForeignKey("verdicts.id"), index=True)
    frame_index: Mapped[int] = mapped_column(Integer)
    phash: Mapped[int] = mapped_column(BigInteger)  # signed: the unsigned hash minus 2**64 when it is >= 2**63
    c0: Mapped[int] = mapped_column(Integer, index=True)
    c1: Mapped[int] = mapped_column(Integer, index=True)
    c2: Mapped[int] = mapped_column(Integer, index=True)
    c3: Mapped[int] = mapped_column(Integer, index=True)


class VerdictNearDuplicate(Base):
    """A link from a verdict to an earlier one of perceptually similar media (a re-encode, resize or crop)."""

    __tablename__ = "verdict_near_duplicates"

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    verdict_id: Mapped[int] = mapped_column(RowId, ForeignKey("verdicts.id"), index=True)
    earlier_verdict_id: Mapped[int] = mapped_column(RowId, ForeignKey("verdicts.id"), index=True)
    distance: Mapped[int] = mapped_column(Integer)  # the smallest Hamming distance between their frames' hashes
    matching_frames: Mapped[int] = mapped_column(Integer)  # this verdict's frames with a match in the earlier one
    frames_compared: Mapped[int] = mapped_column(Integer)  # this verdict's frames that were hashed


class Review(Base):
    """A person's judgement of a verdict's media (migration 0005); append-only. The newest review of a job is its
    reviewed truth: ``latest_verdicts.final_label`` shows it, ``trainer export-reviews`` trains on it."""

    __tablename__ = "reviews"
    __table_args__ = (
        CheckConstraint("label IN ('real', 'fake')", name="label"),
        Index("ix_reviews_job_id_id", "job_id", "id"),
    )

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    verdict_id: Mapped[int] = mapped_column(RowId, ForeignKey("verdicts.id"), index=True)
    job_id: Mapped[str] = mapped_column(Text)  # the verdict's, so a job's reviews are found without a join
    label: Mapped[str] = mapped_column(String(16))  # real | fake
    manipulation: Mapped[str | None] = mapped_column(Text)  # the manipulation class, for multi-class engines
    reviewer: Mapped[str] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now(), index=True)


class EngineRow(Base):
    """An engine a daemon has served: its manifest, flattened where analysts filter, whole in ``manifest``.

    Verdicts join on (name, version, artifact_sha256) = (engine_name, engine_version, engine_artifact_sha256).
    """

    __tablename__ = "engines"
    __table_args__ = (UniqueConstraint("name", "version", "artifact_sha256", name="uq_engines_name_version_artifact"),)

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer)
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    recipe: Mapped[str] = mapped_column(Text)
    recipe_sha256: Mapped[str] = mapped_column(String(64))
    detector: Mapped[str] = mapped_column(Text)
    task_kind: Mapped[str] = mapped_column(Text)
    class_names: Mapped[list[str]] = mapped_column(json_document())
    backend: Mapped[str] = mapped_column(Text)
    backend_version: Mapped[str] = mapped_column(Text)
    precision: Mapped[str] = mapped_column(Text)
    weights_sha256: Mapped[str] = mapped_column(String(64))
    threshold: Mapped[float] = mapped_column(Double)
    calibration: Mapped[dict[str, Any]] = mapped_column(json_document())
    evaluation: Mapped[dict[str, Any]] = mapped_column(json_document())
    manifest: Mapped[dict[str, Any]] = mapped_column(json_document())
    built_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    first_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class JobAttempt(Base):
    """How often `daemon run` started a Kafka message (one row per topic, partition, offset): a message whose
    deliveries keep starting without a verdict is killing the daemons that take it (migration 0003).

    Unlike verdicts these rows are updated and deleted: they matter only until the message's offset is
    committed, and are cleaned up after that.
    """

    __tablename__ = "job_attempts"

    kafka_topic: Mapped[str] = mapped_column(Text, primary_key=True)
    kafka_partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    kafka_offset: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    job_id: Mapped[str | None] = mapped_column(Text)  # the producer's id when readable, for operators
    attempts: Mapped[int] = mapped_column(Integer)
    first_started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class EnginePromotion(Base):
    """A change of an engine's current version (migration 0007); append-only. ``promote`` and ``rollback`` rows
    are the engine store's history, copied in by the daemon (``history_key`` unique per engine, so a re-copy adds
    nothing); a ``daemon_switch`` row is a daemon replica starting to serve a version. Written by
    ``daemon.promotions``."""

    __tablename__ = "engine_promotions"
    __table_args__ = (
        CheckConstraint("kind IN ('promote', 'rollback', 'daemon_switch')", name="kind"),
        CheckConstraint("(kind = 'daemon_switch') = (history_key IS NULL)", name="history_key"),
        UniqueConstraint("engine_name", "history_key", name="uq_engine_promotions_engine_name_history_key"),
        Index("ix_engine_promotions_engine_name_occurred_at", "engine_name", "occurred_at"),
    )

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    engine_name: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(16))  # promote | rollback | daemon_switch
    version: Mapped[int] = mapped_column(Integer)  # current (or served, for a switch) from occurred_at on
    previous_version: Mapped[int | None] = mapped_column(Integer)  # None: the first promotion, or a daemon start
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # when it changed, UTC
    actor: Mapped[str | None] = mapped_column(Text)  # the user who promoted or rolled back
    reason: Mapped[str | None] = mapped_column(Text)
    replica: Mapped[str | None] = mapped_column(Text)  # daemon_switch: host name and process id
    history_key: Mapped[str | None] = mapped_column(Text)  # store rows: "<time> <action> v<version>"
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
