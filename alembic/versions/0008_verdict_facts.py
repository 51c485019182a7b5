"""Facts a verdict carries, a decision to filter on, and views that answer the usual questions on both databases.

- ``verdicts.submitted_at``: when the job was submitted: the Kafka record's timestamp for ``daemon run``, the
  scan's start for ``daemon scan``. ``timings_ms`` gains ``queue_wait`` and ``total`` beside the stage timings
  (written by the daemon, not a column). NULL for verdicts stored before this revision.
- ``verdicts.min_track_fraction`` (the aggregation rule's parameter, beside ``aggregation``) and
  ``verdicts.masks_requested``; backfilled where derivable: ``masks_requested`` is true for a verdict that has
  masks, NULL (unknown) for the others.
- ``verdicts.is_fake``: the decision, true for ``fake`` and for a multi-class engine's manipulation class, false
  for ``real``, NULL when the verdict decides nothing (``error``, ``abstained``, ``uncertain``); and
  ``verdicts.manipulation``: a multi-class engine's fake class (its label), NULL for binary engines and reals.
  Both are backfilled from ``label``: a fake's label is its manipulation when the ``engines`` row of the verdict's
  engine says ``multiclass`` (without one, when the label is not ``fake``). ``label`` is kept as it is.
- ``latest_verdicts`` is created again with the new columns; ``review_queue`` reads it, and its ``disagreement``
  now compares ``is_fake``. New views: ``latest_by_content`` (the newest serving verdict per media sha256, with how
  many jobs brought that content) and ``verdict_flips`` (per content and engine name, each pair of versions whose
  outcome differs: ``real``/``fake``/``uncertain``/``abstained``/``error``; one row per content per version pair,
  whatever the re-uploads: each version is represented by its newest verdict of the content, any role).

The backfill updates verdicts, which are append-only: the UPDATE guard is lifted for it inside this migration
and put back as 0001 made it (on PostgreSQL the migration's transaction covers both). Hand-written and frozen,
like 0001-0007.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-16
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APPEND_ONLY_MESSAGE = "verdicts are append-only"  # 0001's
PG_UPDATE_GUARD = "trg_verdicts_append_only"  # 0001's: refuses UPDATE and DELETE on verdicts
SQLITE_UPDATE_GUARD = "trg_verdicts_no_update"
SAMPLE_DIGIT = "0"  # review_queue: confident verdicts whose media sha256 starts with this hex digit (1 in 16)
NEW_COLUMNS = ("submitted_at", "min_track_fraction", "masks_requested", "is_fake", "manipulation")
NEW_VIEWS = ("verdict_flips", "latest_by_content")

# What an ok verdict's label decides (NULL: nothing) and when it is a manipulation class, as the daemon writes them.
IS_FAKE = "CASE WHEN status = 'ok' AND label IS NOT NULL AND label <> 'uncertain' THEN label <> 'real' END"
ENGINE_KIND = (
    "(SELECT e.task_kind FROM engines AS e WHERE e.name = verdicts.engine_name "
    "AND e.version = verdicts.engine_version AND e.artifact_sha256 = verdicts.engine_artifact_sha256)"
)
MANIPULATION = (
    "CASE WHEN status = 'ok' AND label IS NOT NULL AND label NOT IN ('real', 'uncertain') "
    f"AND COALESCE({ENGINE_KIND}, CASE WHEN label = 'fake' THEN 'binary' ELSE 'multiclass' END) = 'multiclass' "
    "THEN label END"
)
HAS_MASKS = "EXISTS (SELECT 1 FROM verdict_masks AS m WHERE m.verdict_id = verdicts.id)"
# A verdict's outcome in verdict_flips: its decision when ok, else its status.
OUTCOME = (
    "CASE WHEN {v}.status <> 'ok' THEN {v}.status WHEN {v}.is_fake IS NULL THEN 'uncertain' "
    "WHEN {v}.is_fake THEN 'fake' ELSE 'real' END"
)


def _dialect() -> str:
    dialect = op.get_context().dialect.name
    if dialect not in ("sqlite", "postgresql"):
        raise NotImplementedError(f"the append-only triggers are written for SQLite and PostgreSQL, not {dialect}")
    return dialect


def _verdict_columns() -> list[str]:
    return [c["name"] for c in sa.inspect(op.get_bind()).get_columns("verdicts")]


def _create_latest_verdicts_view() -> None:
    """The newest serving verdict per job, every column of ``verdicts``, and the job's newest review (as 0005)."""
    columns = ", ".join(f"v.{name}" for name in _verdict_columns())
    op.execute(
        f"CREATE VIEW latest_verdicts AS SELECT {columns}, r.id AS review_id, r.label AS reviewed_label, "
        "r.manipulation AS reviewed_manipulation, r.reviewer AS reviewer, r.created_at AS reviewed_at, "
        "COALESCE(r.manipulation, r.label, v.label) AS final_label "
        "FROM verdicts AS v LEFT JOIN reviews AS r ON r.job_id = v.job_id "
        "AND NOT EXISTS (SELECT 1 FROM reviews AS newer_review WHERE newer_review.job_id = r.job_id "
        "AND newer_review.id > r.id) "
        "WHERE v.role = 'serving' AND NOT EXISTS (SELECT 1 FROM verdicts AS newer WHERE newer.job_id = v.job_id "
        "AND newer.role = 'serving' AND newer.id > v.id)"
    )


def _create_review_queue_view(decision: str) -> None:
    """0005's queue; ``decision`` is how a shadow's definite decision is told apart from the serving one's."""
    shown = (
        "l.id AS verdict_id, l.job_id, {reason} AS reason, l.engine_name, l.engine_version, l.label, l.p_fake, "
        "l.threshold, l.media_uri, l.media_sha256, l.created_at"
    )
    disagrees = (
        "EXISTS (SELECT 1 FROM verdicts AS s WHERE s.job_id = l.job_id AND s.role = 'shadow' AND s.status = 'ok' "
        f"AND s.label <> 'uncertain' AND {decision})"
    )
    unreviewed = "l.review_id IS NULL AND l.status = 'ok'"
    op.execute(
        "CREATE VIEW review_queue AS "
        f"SELECT {shown.format(reason=repr('uncertain'))} FROM latest_verdicts AS l "
        f"WHERE {unreviewed} AND l.label = 'uncertain' "
        "UNION ALL "
        f"SELECT {shown.format(reason=repr('disagreement'))} FROM latest_verdicts AS l "
        f"WHERE {unreviewed} AND l.label <> 'uncertain' AND {disagrees} "
        "UNION ALL "
        f"SELECT {shown.format(reason=repr('sample'))} FROM latest_verdicts AS l "
        f"WHERE {unreviewed} AND l.label <> 'uncertain' AND substr(l.media_sha256, 1, 1) = '{SAMPLE_DIGIT}' "
        f"AND NOT {disagrees}"
    )


def _create_latest_by_content_view() -> None:
    """The newest serving verdict per content (media sha256), how many jobs brought it, when it was first judged."""
    columns = ", ".join(f"v.{name}" for name in _verdict_columns())
    op.execute(
        f"CREATE VIEW latest_by_content AS SELECT {columns}, "
        "(SELECT COUNT(DISTINCT j.job_id) FROM verdicts AS j WHERE j.media_sha256 = v.media_sha256 "
        "AND j.role = 'serving') AS jobs, "
        "(SELECT MIN(f.created_at) FROM verdicts AS f WHERE f.media_sha256 = v.media_sha256 "
        "AND f.role = 'serving') AS first_judged_at "
        "FROM verdicts AS v WHERE v.role = 'serving' AND v.media_sha256 IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM verdicts AS newer WHERE newer.media_sha256 = v.media_sha256 "
        "AND newer.role = 'serving' AND newer.id > v.id)"
    )


def _create_verdict_flips_view() -> None:
    """Per content and engine name, each pair of versions (a < b) whose outcomes differ; a version's verdict of a
    content is its newest, serving or shadow, so re-uploads do not multiply the pairs."""
    newest = (
        "SELECT * FROM verdicts AS v WHERE v.media_sha256 IS NOT NULL AND NOT EXISTS (SELECT 1 FROM verdicts AS newer "
        "WHERE newer.media_sha256 = v.media_sha256 AND newer.engine_name = v.engine_name "
        "AND newer.engine_version = v.engine_version AND newer.id > v.id)"
    )
    a, b = OUTCOME.format(v="a"), OUTCOME.format(v="b")
    op.execute(
        "CREATE VIEW verdict_flips AS "
        "SELECT a.media_sha256, a.engine_name, a.engine_version AS from_version, b.engine_version AS to_version, "
        f"{a} AS from_outcome, {b} AS to_outcome, a.id AS from_verdict_id, b.id AS to_verdict_id, "
        "a.label AS from_label, b.label AS to_label, a.p_fake AS from_p_fake, b.p_fake AS to_p_fake, "
        "a.code AS from_code, b.code AS to_code, a.created_at AS from_created_at, b.created_at AS to_created_at "
        f"FROM ({newest}) AS a JOIN ({newest}) AS b ON b.media_sha256 = a.media_sha256 "
        "AND b.engine_name = a.engine_name AND b.engine_version > a.engine_version "
        f"WHERE {a} <> {b}"
    )


def _drop_views(names: Sequence[str]) -> None:
    for name in names:
        op.execute(f"DROP VIEW {name}")


def _backfill(dialect: str) -> None:
    """Derive the new columns of the rows already stored, with the UPDATE guard lifted meanwhile."""
    if dialect == "sqlite":
        op.execute(f"DROP TRIGGER {SQLITE_UPDATE_GUARD}")
    else:
        op.execute(f"ALTER TABLE verdicts DISABLE TRIGGER {PG_UPDATE_GUARD}")
    op.execute(
        f"UPDATE verdicts SET is_fake = {IS_FAKE}, manipulation = {MANIPULATION} "
        "WHERE status = 'ok' AND label IS NOT NULL AND label <> 'uncertain'"
    )
    op.execute(f"UPDATE verdicts SET masks_requested = TRUE WHERE {HAS_MASKS}")
    if dialect == "sqlite":
        op.execute(
            f"CREATE TRIGGER {SQLITE_UPDATE_GUARD} BEFORE UPDATE ON verdicts "
            f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END"
        )
    else:
        op.execute(f"ALTER TABLE verdicts ENABLE TRIGGER {PG_UPDATE_GUARD}")


def upgrade() -> None:
    dialect = _dialect()
    _drop_views(("review_queue", "latest_verdicts"))
    op.add_column("verdicts", sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("verdicts", sa.Column("min_track_fraction", sa.Double(), nullable=True))
    op.add_column("verdicts", sa.Column("masks_requested", sa.Boolean(), nullable=True))
    op.add_column("verdicts", sa.Column("is_fake", sa.Boolean(), nullable=True))
    op.add_column("verdicts", sa.Column("manipulation", sa.Text(), nullable=True))
    _backfill(dialect)
    _create_latest_verdicts_view()
    _create_review_queue_view("s.is_fake IS NOT NULL AND s.is_fake <> l.is_fake")
    _create_latest_by_content_view()
    _create_verdict_flips_view()


def downgrade() -> None:
    _dialect()
    _drop_views((*NEW_VIEWS, "review_queue", "latest_verdicts"))
    for name in reversed(NEW_COLUMNS):
        op.drop_column("verdicts", name)
    _create_latest_verdicts_view()
    _create_review_queue_view("(s.label = 'real') <> (l.label = 'real')")
