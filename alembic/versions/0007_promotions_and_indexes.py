"""Engine promotions in SQL, and indexes for the questions analysts ask at millions of rows.

- ``engine_promotions``: append-only; one row per change of an engine's current version. ``kind`` says which:
  ``promote`` and ``rollback`` are the engine store's history (``ROOT/NAME/promotions.jsonl``), copied in by the
  daemon when it opens the engine and on each hot reload; ``history_key`` (the line's time, action and version)
  is unique per engine, so copying the same history again inserts nothing. ``daemon_switch`` is a daemon
  replica (``replica``: its host name and process id) starting to serve a version (``previous_version`` NULL at
  start-up); it has no ``history_key``. "Which version was current at time T" is the newest store row at or
  before T; "which version served on replica R at T" the newest switch of R.
- ``ix_verdicts_engine_name_engine_version_created_at``: one engine version's verdicts over a time range.
- ``ix_verdicts_uploader``: an expression index on ``job_metadata ->> 'uploader'``, the uploader key producers
  put in a job's metadata; the same expression in a query uses it on SQLite and PostgreSQL.
- ``ix_verdicts_job_metadata`` (PostgreSQL only): a GIN index (``jsonb_path_ops``) for containment queries on any
  metadata key (``job_metadata @> '{"campaign": "c-7"}'``).
- ``ix_verdicts_serving_job_id_id``: (job_id, id) of serving verdicts only, the "is there a newer serving
  verdict of this job" probe of ``latest_verdicts``, answered from the index alone; with ``ix_verdicts_created_at``
  it makes ``latest_verdicts WHERE created_at >= <cutoff>`` (the newest verdicts of the last day) an index range
  plus one index probe per row, not a scan of the table.

The indexes are created ``IF NOT EXISTS``: on a large PostgreSQL database, create them beforehand with
``CREATE INDEX CONCURRENTLY`` under the same names (README.md, "Querying verdict history") and the migration
takes no long lock.
Hand-written and frozen, like 0001-0006.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-16
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APPEND_ONLY_MESSAGE = "verdicts are append-only"  # 0001's wording; the PostgreSQL trigger names the table
PG_REFUSE_FUNCTION = "deepsift_refuse_change"  # created by 0001
PROMOTION_KINDS = ("promote", "rollback", "daemon_switch")

# name -> (SQLite DDL, PostgreSQL DDL); None where the index is not made on that database.
INDEXES: dict[str, tuple[str | None, str | None]] = {
    "ix_verdicts_engine_name_engine_version_created_at": (
        "ON verdicts (engine_name, engine_version, created_at)",
        "ON verdicts (engine_name, engine_version, created_at)",
    ),
    "ix_verdicts_uploader": (
        "ON verdicts ((job_metadata ->> 'uploader'))",
        "ON verdicts ((job_metadata ->> 'uploader'))",
    ),
    "ix_verdicts_job_metadata": (None, "ON verdicts USING gin (job_metadata jsonb_path_ops)"),
    "ix_verdicts_serving_job_id_id": (
        "ON verdicts (job_id, id) WHERE role = 'serving'",
        "ON verdicts (job_id, id) WHERE role = 'serving'",
    ),
}


def _dialect() -> str:
    dialect = op.get_context().dialect.name
    if dialect not in ("sqlite", "postgresql"):
        raise NotImplementedError(f"the append-only triggers are written for SQLite and PostgreSQL, not {dialect}")
    return dialect


def _create_engine_promotions() -> None:
    kinds = ", ".join(f"'{kind}'" for kind in PROMOTION_KINDS)
    op.create_table(
        "engine_promotions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("engine_name", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("previous_version", sa.Integer(), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("replica", sa.Text(), nullable=True),
        sa.Column("history_key", sa.Text(), nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint(f"kind IN ({kinds})", name=op.f("ck_engine_promotions_kind")),
        sa.CheckConstraint(
            "(kind = 'daemon_switch') = (history_key IS NULL)", name=op.f("ck_engine_promotions_history_key")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_engine_promotions")),
        sa.UniqueConstraint("engine_name", "history_key", name=op.f("uq_engine_promotions_engine_name_history_key")),
    )
    op.create_index(
        op.f("ix_engine_promotions_engine_name_occurred_at"), "engine_promotions", ["engine_name", "occurred_at"]
    )


def _guard_engine_promotions(dialect: str) -> None:
    if dialect == "sqlite":
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER trg_engine_promotions_no_{action.lower()} BEFORE {action} ON engine_promotions "
                f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END"
            )
        return
    op.execute(
        "CREATE TRIGGER trg_engine_promotions_append_only BEFORE UPDATE OR DELETE ON engine_promotions "
        f"FOR EACH ROW EXECUTE FUNCTION {PG_REFUSE_FUNCTION}()"
    )
    op.execute(
        "CREATE TRIGGER trg_engine_promotions_no_truncate BEFORE TRUNCATE ON engine_promotions "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {PG_REFUSE_FUNCTION}()"
    )


def _create_indexes(dialect: str) -> None:
    for name, (sqlite_ddl, postgresql_ddl) in INDEXES.items():
        ddl = sqlite_ddl if dialect == "sqlite" else postgresql_ddl
        if ddl is not None:
            op.execute(f"CREATE INDEX IF NOT EXISTS {name} {ddl}")


def upgrade() -> None:
    dialect = _dialect()
    _create_engine_promotions()
    _guard_engine_promotions(dialect)
    _create_indexes(dialect)


def downgrade() -> None:
    _dialect()
    for name in reversed(INDEXES):
        op.execute(f"DROP INDEX IF EXISTS {name}")
    op.drop_table("engine_promotions")  # its triggers go with it
