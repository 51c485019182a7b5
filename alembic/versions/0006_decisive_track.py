"""Which track decided a verdict, and why.

- ``verdicts.decisive_track_id``: the track whose score became the media's P(fake) (``max_of_covered_tracks``), or
  the one that weighed most in the fallback mean (``coverage_weighted_fallback``); it names a ``verdict_tracks`` row
  of the verdict (a re-upload's names one of the verdict it reused). NULL for verdicts without a score and for
  verdicts stored before this revision.
- ``verdicts.decision``: how the media's P(fake) was decided (``engines.aggregate.DECISIONS``); NULL likewise.

``latest_verdicts`` shows every column of ``verdicts``, so it is dropped and created again with the new columns;
``review_queue`` reads it and goes and comes back with it. Both are created as 0005 creates them.
Hand-written and frozen, like 0001-0005.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-09
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SAMPLE_DIGIT = "0"  # review_queue: confident verdicts whose media sha256 starts with this hex digit (1 in 16)


def _dialect() -> str:
    dialect = op.get_context().dialect.name
    if dialect not in ("sqlite", "postgresql"):
        raise NotImplementedError(f"the append-only triggers are written for SQLite and PostgreSQL, not {dialect}")
    return dialect


def _verdict_columns() -> list[str]:
    return [c["name"] for c in sa.inspect(op.get_bind()).get_columns("verdicts")]


def _create_latest_verdicts_view() -> None:
    """The newest serving verdict per job, every column of ``verdicts``, and the job's newest review."""
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


def _create_review_queue_view() -> None:
    """Three reasons, each verdict at most once: uncertain, disagreement (definite decisions only), sample."""
    shown = (
        "l.id AS verdict_id, l.job_id, {reason} AS reason, l.engine_name, l.engine_version, l.label, l.p_fake, "
        "l.threshold, l.media_uri, l.media_sha256, l.created_at"
    )
    disagrees = (
        "EXISTS (SELECT 1 FROM verdicts AS s WHERE s.job_id = l.job_id AND s.role = 'shadow' AND s.status = 'ok' "
        "AND s.label <> 'uncertain' AND (s.label = 'real') <> (l.label = 'real'))"
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


def _drop_views() -> None:
    op.execute("DROP VIEW review_queue")  # it reads latest_verdicts
    op.execute("DROP VIEW latest_verdicts")


def _create_views() -> None:
    _create_latest_verdicts_view()
    _create_review_queue_view()


def upgrade() -> None:
    _dialect()
    _drop_views()
    op.add_column("verdicts", sa.Column("decisive_track_id", sa.Integer(), nullable=True))
    op.add_column("verdicts", sa.Column("decision", sa.Text(), nullable=True))
    _create_views()


def downgrade() -> None:
    _dialect()
    _drop_views()
    op.drop_column("verdicts", "decision")
    op.drop_column("verdicts", "decisive_track_id")
    _create_views()
