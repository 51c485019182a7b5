"""Initial schema: verdicts and their children, the latest_verdicts view, append-only triggers.

Hand-written and frozen: it repeats the column definitions instead of importing ``daemon.models``, so
later model changes cannot rewrite history. A test checks that the models still match it.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APPEND_ONLY_TABLES = ("verdicts", "verdict_frames", "verdict_tracks", "verdict_masks")
APPEND_ONLY_MESSAGE = "verdicts are append-only"
PG_REFUSE_FUNCTION = "deepsift_refuse_change"


def _row_id() -> sa.types.TypeEngine:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _json() -> sa.types.TypeEngine:
    return sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def _child_columns() -> list[sa.Column]:
    return [
        sa.Column("id", _row_id(), primary_key=True, autoincrement=True),
        sa.Column("verdict_id", _row_id(), nullable=False),
    ]


def _child_constraints(table: str) -> list[sa.Constraint]:
    return [
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{table}")),
        sa.ForeignKeyConstraint(["verdict_id"], ["verdicts.id"], name=op.f(f"fk_{table}_verdict_id_verdicts")),
    ]


def _create_verdicts() -> sa.Table:
    table = op.create_table(
        "verdicts",
        sa.Column("id", _row_id(), primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("media_uri", sa.Text(), nullable=False),
        sa.Column("media_sha256", sa.String(64), nullable=True),
        sa.Column("media_type", sa.Text(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("label", sa.Text(), nullable=True),
        sa.Column("p_fake", sa.Double(), nullable=True),
        sa.Column("class_probs", _json(), nullable=True),
        sa.Column("threshold", sa.Double(), nullable=True),
        sa.Column("code", sa.Text(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("engine_name", sa.Text(), nullable=False),
        sa.Column("engine_version", sa.Integer(), nullable=False),
        sa.Column("engine_artifact_sha256", sa.String(64), nullable=False),
        sa.Column("aggregation", sa.Text(), nullable=True),
        sa.Column("frames_requested", sa.Integer(), nullable=True),
        sa.Column("frames_sampled", sa.Integer(), nullable=True),
        sa.Column("container", sa.Text(), nullable=True),
        sa.Column("codec", sa.Text(), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("fps", sa.Double(), nullable=True),
        sa.Column("duration_s", sa.Double(), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("timings_ms", _json(), nullable=False),
        sa.Column("job_metadata", _json(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_verdicts")),
        sa.UniqueConstraint("job_id", "engine_name", "engine_version", name=op.f("uq_verdicts_job_engine")),
        sa.CheckConstraint("status IN ('ok', 'abstained', 'error')", name=op.f("ck_verdicts_status")),
    )
    op.create_index(op.f("ix_verdicts_job_id_id"), "verdicts", ["job_id", "id"])
    op.create_index(op.f("ix_verdicts_media_sha256"), "verdicts", ["media_sha256"])
    op.create_index(op.f("ix_verdicts_created_at"), "verdicts", ["created_at"])
    op.create_index(op.f("ix_verdicts_status"), "verdicts", ["status"])
    return table


def _create_children() -> None:
    op.create_table(
        "verdict_frames",
        *_child_columns(),
        sa.Column("frame_index", sa.Integer(), nullable=False),
        sa.Column("pts_s", sa.Double(), nullable=True),
        sa.Column("face_index", sa.Integer(), nullable=True),
        sa.Column("track_id", sa.Integer(), nullable=True),
        sa.Column("x0", sa.Double(), nullable=True),
        sa.Column("y0", sa.Double(), nullable=True),
        sa.Column("x1", sa.Double(), nullable=True),
        sa.Column("y1", sa.Double(), nullable=True),
        sa.Column("face_confidence", sa.Double(), nullable=True),
        sa.Column("p_fake", sa.Double(), nullable=False),
        *_child_constraints("verdict_frames"),
    )
    op.create_table(
        "verdict_tracks",
        *_child_columns(),
        sa.Column("track_id", sa.Integer(), nullable=False),
        sa.Column("n_frames", sa.Integer(), nullable=False),
        sa.Column("p_fake", sa.Double(), nullable=False),
        sa.Column("first_frame", sa.Integer(), nullable=False),
        sa.Column("last_frame", sa.Integer(), nullable=False),
        *_child_constraints("verdict_tracks"),
    )
    op.create_table(
        "verdict_masks",
        *_child_columns(),
        sa.Column("frame_index", sa.Integer(), nullable=False),
        sa.Column("track_id", sa.Integer(), nullable=True),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("png", sa.LargeBinary(), nullable=False),
        *_child_constraints("verdict_masks"),
    )
    for table in APPEND_ONLY_TABLES[1:]:
        op.create_index(op.f(f"ix_{table}_verdict_id"), table, ["verdict_id"])


def _create_latest_verdicts_view(verdicts: sa.Table) -> None:
    """The newest verdict per job; columns are listed so SQLite and PostgreSQL expose the same set."""
    columns = ", ".join(f"v.{column.name}" for column in verdicts.columns)
    op.execute(
        f"CREATE VIEW latest_verdicts AS SELECT {columns} FROM verdicts AS v "
        "WHERE NOT EXISTS (SELECT 1 FROM verdicts AS newer WHERE newer.job_id = v.job_id AND newer.id > v.id)"
    )


def _create_sqlite_guards() -> None:
    for table in APPEND_ONLY_TABLES:
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER trg_{table}_no_{action.lower()} BEFORE {action} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END"
            )


def _create_postgresql_guards() -> None:
    # restrict_violation makes the refusal an IntegrityError, as SQLite's RAISE(ABORT) is.
    op.execute(
        f"CREATE FUNCTION {PG_REFUSE_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"RAISE EXCEPTION USING ERRCODE = 'restrict_violation', "
        f"MESSAGE = '{APPEND_ONLY_MESSAGE} (' || TG_OP || ' on ' || TG_TABLE_NAME || ' refused)'; "
        "END $$"
    )
    for table in APPEND_ONLY_TABLES:
        op.execute(
            f"CREATE TRIGGER trg_{table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {PG_REFUSE_FUNCTION}()"
        )
        op.execute(
            f"CREATE TRIGGER trg_{table}_no_truncate BEFORE TRUNCATE ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {PG_REFUSE_FUNCTION}()"
        )


def _dialect() -> str:
    dialect = op.get_context().dialect.name
    if dialect not in ("sqlite", "postgresql"):
        raise NotImplementedError(f"the append-only triggers are written for SQLite and PostgreSQL, not {dialect}")
    return dialect


def upgrade() -> None:
    dialect = _dialect()
    verdicts = _create_verdicts()
    _create_children()
    _create_latest_verdicts_view(verdicts)
    if dialect == "sqlite":
        _create_sqlite_guards()
    else:
        _create_postgresql_guards()


def downgrade() -> None:
    dialect = _dialect()
    op.execute("DROP VIEW IF EXISTS latest_verdicts")
    # Dropping a table drops its triggers; children go first because of their foreign keys.
    for table in reversed(APPEND_ONLY_TABLES):
        op.drop_table(table)
    if dialect == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS {PG_REFUSE_FUNCTION}()")
