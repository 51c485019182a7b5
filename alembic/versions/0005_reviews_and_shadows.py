"""The operating loop: human reviews, shadow verdicts, and the review queue.

- ``verdicts.role``: ``serving`` (the verdict a job's producer is told of) or ``shadow`` (a shadow engine's
  verdict of the same job, scored on the same prepared pixels; never announced, never in ``latest_verdicts``).
  Existing rows are serving verdicts. PostgreSQL checks the value; SQLite cannot add a CHECK to an existing
  table without rebuilding it (which would drop its append-only triggers), so there the daemon's own records
  are the check.
- ``reviews``: append-only; one row per human review of a verdict (``label`` real | fake, the manipulation class
  for multi-class engines, who, a note, when). ``job_id`` is copied from the verdict: the newest review of a job
  is its reviewed truth, whichever of the job's verdicts the reviewer looked at.
- ``latest_verdicts``: the newest *serving* verdict per job, with the newest review of the job beside it and
  ``final_label`` (the review's manipulation or label where there is one, else the engine's label).
- ``review_queue``: unreviewed ``ok`` serving verdicts worth a reviewer's time, with the reason: ``uncertain``
  (inside the engine's uncertain band), ``disagreement`` (a shadow engine's real/fake decision differs from the
  serving one's) and ``sample`` (the confident verdicts of one content in 16, chosen by the first hex digit of the
  media's sha256 — uniform, and independent of row ids and of how many shadow engines interleave them: the
  errors the engine is sure about).

Hand-written and frozen, like 0001-0004.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APPEND_ONLY_MESSAGE = "verdicts are append-only"
PG_REFUSE_FUNCTION = "deepsift_refuse_change"  # created by 0001
SAMPLE_DIGIT = "0"  # review_queue: confident verdicts whose media sha256 starts with this hex digit (1 in 16)


def _row_id() -> sa.types.TypeEngine:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


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


def _create_reviews() -> None:
    op.create_table(
        "reviews",
        sa.Column("id", _row_id(), autoincrement=True, nullable=False),
        sa.Column("verdict_id", _row_id(), nullable=False),
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("label", sa.String(16), nullable=False),
        sa.Column("manipulation", sa.Text(), nullable=True),
        sa.Column("reviewer", sa.Text(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("label IN ('real', 'fake')", name=op.f("ck_reviews_label")),
        sa.ForeignKeyConstraint(["verdict_id"], ["verdicts.id"], name=op.f("fk_reviews_verdict_id_verdicts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reviews")),
    )
    op.create_index(op.f("ix_reviews_verdict_id"), "reviews", ["verdict_id"])
    op.create_index(op.f("ix_reviews_job_id_id"), "reviews", ["job_id", "id"])
    op.create_index(op.f("ix_reviews_created_at"), "reviews", ["created_at"])


def _guard_reviews(dialect: str) -> None:
    if dialect == "sqlite":
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER trg_reviews_no_{action.lower()} BEFORE {action} ON reviews "
                f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END"
            )
        return
    op.execute(
        "CREATE TRIGGER trg_reviews_append_only BEFORE UPDATE OR DELETE ON reviews "
        f"FOR EACH ROW EXECUTE FUNCTION {PG_REFUSE_FUNCTION}()"
    )
    op.execute(
        "CREATE TRIGGER trg_reviews_no_truncate BEFORE TRUNCATE ON reviews "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {PG_REFUSE_FUNCTION}()"
    )


def upgrade() -> None:
    dialect = _dialect()
    op.execute("DROP VIEW latest_verdicts")
    op.add_column("verdicts", sa.Column("role", sa.String(16), server_default="serving", nullable=False))
    if dialect == "postgresql":
        op.create_check_constraint(op.f("ck_verdicts_role"), "verdicts", "role IN ('serving', 'shadow')")
    _create_reviews()
    _guard_reviews(dialect)
    _create_latest_verdicts_view()
    _create_review_queue_view()


def downgrade() -> None:
    dialect = _dialect()
    shadows = op.get_bind().execute(sa.text("SELECT COUNT(*) FROM verdicts WHERE role = 'shadow'")).scalar()
    if shadows:  # without the role they would read as serving verdicts, in latest_verdicts too
        raise RuntimeError(f"{shadows} shadow verdicts are stored; 0004 cannot tell them from serving verdicts")
    op.execute("DROP VIEW review_queue")
    op.execute("DROP VIEW latest_verdicts")
    op.drop_table("reviews")  # its triggers go with it
    if dialect == "postgresql":
        op.drop_constraint(op.f("ck_verdicts_role"), "verdicts", type_="check")
    op.drop_column("verdicts", "role")
    columns = ", ".join(f"v.{name}" for name in _verdict_columns())
    op.execute(
        f"CREATE VIEW latest_verdicts AS SELECT {columns} FROM verdicts AS v "
        "WHERE NOT EXISTS (SELECT 1 FROM verdicts AS newer WHERE newer.job_id = v.job_id AND newer.id > v.id)"
    )
