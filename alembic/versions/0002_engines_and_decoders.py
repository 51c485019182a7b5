"""Engines in SQL and the decoder on each verdict.

- ``engines``: one row per engine a daemon has served (name, version, artifact hash, recipe, backend,
  precision, threshold, calibration, evaluation and the whole manifest), so verdicts join to the engine
  that made them. Append-only like the verdicts: an engine version never changes once built.
- ``verdicts.decoder`` (``pyav`` | ``dali``) and ``verdicts.decoder_note`` (why DALI was passed over).
- ``latest_verdicts`` is recreated so it shows the new columns.

Hand-written and frozen, like 0001: it repeats DDL instead of importing ``daemon.models``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PG_REFUSE_FUNCTION = "deepsift_refuse_change"  # created by 0001
APPEND_ONLY_MESSAGE = "verdicts are append-only"  # 0001's wording; the trigger names the table


def _json() -> sa.types.TypeEngine:
    return sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def _create_engines() -> None:
    op.create_table(
        "engines",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("artifact_sha256", sa.String(64), nullable=False),
        sa.Column("recipe", sa.Text(), nullable=False),
        sa.Column("recipe_sha256", sa.String(64), nullable=False),
        sa.Column("detector", sa.Text(), nullable=False),
        sa.Column("task_kind", sa.Text(), nullable=False),
        sa.Column("class_names", _json(), nullable=False),
        sa.Column("backend", sa.Text(), nullable=False),
        sa.Column("backend_version", sa.Text(), nullable=False),
        sa.Column("precision", sa.Text(), nullable=False),
        sa.Column("weights_sha256", sa.String(64), nullable=False),
        sa.Column("threshold", sa.Double(), nullable=False),
        sa.Column("calibration", _json(), nullable=False),
        sa.Column("evaluation", _json(), nullable=False),
        sa.Column("manifest", _json(), nullable=False),
        sa.Column("built_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_engines")),
        sa.UniqueConstraint("name", "version", "artifact_sha256", name=op.f("uq_engines_name_version_artifact")),
    )


def _guard_engines(dialect: str) -> None:
    if dialect == "sqlite":
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER trg_engines_no_{action.lower()} BEFORE {action} ON engines "
                f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END"
            )
        return
    op.execute(
        "CREATE TRIGGER trg_engines_append_only BEFORE UPDATE OR DELETE ON engines "
        f"FOR EACH ROW EXECUTE FUNCTION {PG_REFUSE_FUNCTION}()"
    )
    op.execute(
        "CREATE TRIGGER trg_engines_no_truncate BEFORE TRUNCATE ON engines "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {PG_REFUSE_FUNCTION}()"
    )


def _create_latest_verdicts_view() -> None:
    """The newest verdict per job, with every column of ``verdicts`` as it is now."""
    columns = ", ".join(f"v.{c['name']}" for c in sa.inspect(op.get_bind()).get_columns("verdicts"))
    op.execute(
        f"CREATE VIEW latest_verdicts AS SELECT {columns} FROM verdicts AS v "
        "WHERE NOT EXISTS (SELECT 1 FROM verdicts AS newer WHERE newer.job_id = v.job_id AND newer.id > v.id)"
    )


def _dialect() -> str:
    dialect = op.get_context().dialect.name
    if dialect not in ("sqlite", "postgresql"):
        raise NotImplementedError(f"the append-only triggers are written for SQLite and PostgreSQL, not {dialect}")
    return dialect


def upgrade() -> None:
    dialect = _dialect()
    _create_engines()
    _guard_engines(dialect)
    op.execute("DROP VIEW latest_verdicts")
    op.add_column("verdicts", sa.Column("decoder", sa.Text(), nullable=True))
    op.add_column("verdicts", sa.Column("decoder_note", sa.Text(), nullable=True))
    _create_latest_verdicts_view()


def downgrade() -> None:
    _dialect()
    op.execute("DROP VIEW latest_verdicts")
    op.drop_column("verdicts", "decoder_note")
    op.drop_column("verdicts", "decoder")
    _create_latest_verdicts_view()
    op.drop_table("engines")  # its triggers go with it
