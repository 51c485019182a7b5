"""Upload-stream signals: re-uploads answered from an earlier verdict, perceptual hashes and near-duplicate
links, Content Credentials.

- ``verdicts.reused_from``: the verdict whose judgement an exact re-upload (same sha256, same engine version)
  took over, without decode or inference; NULL for a verdict of its own.
- ``verdicts.content_credentials``: the summary of the media's C2PA manifest (``engines.provenance``), NULL
  when it carries none.
- ``verdicts.judged_with``: the sha256 of the judge settings the verdict was made under (sampling,
  aggregation, budgets, masks, credentials); a re-upload reuses only a verdict made under the same.
- ``verdict_hashes``: one 64-bit perceptual hash (DCT pHash) per judged image or sampled video frame, stored
  signed (BIGINT) with its four 16-bit chunks in indexed columns: multi-index hashing finds every hash within
  a Hamming distance through index look-ups on the chunks, not a scan of every row.
- ``verdict_near_duplicates``: links from a verdict to earlier verdicts of perceptually similar media
  (nearest distance, frames matched).
- ``ix_verdicts_media_sha256_engine``: the re-upload look-up (sha256, engine name, version).

The new tables are append-only like the other children of ``verdicts``. Hand-written and frozen, like 0001-0003.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APPEND_ONLY_MESSAGE = "verdicts are append-only"
PG_REFUSE_FUNCTION = "deepsift_refuse_change"
NEW_TABLES = ("verdict_hashes", "verdict_near_duplicates")
CHUNKS = ("c0", "c1", "c2", "c3")


def _row_id() -> sa.types.TypeEngine:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _json() -> sa.types.TypeEngine:
    return sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def _dialect() -> str:
    dialect = op.get_context().dialect.name
    if dialect not in ("sqlite", "postgresql"):
        raise NotImplementedError(f"the append-only triggers are written for SQLite and PostgreSQL, not {dialect}")
    return dialect


def _create_latest_verdicts_view() -> None:
    """The newest verdict per job, with every column of ``verdicts`` as it is now."""
    columns = ", ".join(f"v.{c['name']}" for c in sa.inspect(op.get_bind()).get_columns("verdicts"))
    op.execute(
        f"CREATE VIEW latest_verdicts AS SELECT {columns} FROM verdicts AS v "
        "WHERE NOT EXISTS (SELECT 1 FROM verdicts AS newer WHERE newer.job_id = v.job_id AND newer.id > v.id)"
    )


def _create_tables() -> None:
    op.create_table(
        "verdict_hashes",
        sa.Column("id", _row_id(), autoincrement=True, nullable=False),
        sa.Column("verdict_id", _row_id(), nullable=False),
        sa.Column("frame_index", sa.Integer(), nullable=False),
        sa.Column("phash", sa.BigInteger(), nullable=False),
        *(sa.Column(chunk, sa.Integer(), nullable=False) for chunk in CHUNKS),
        sa.ForeignKeyConstraint(["verdict_id"], ["verdicts.id"], name=op.f("fk_verdict_hashes_verdict_id_verdicts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_verdict_hashes")),
    )
    op.create_index(op.f("ix_verdict_hashes_verdict_id"), "verdict_hashes", ["verdict_id"])
    for chunk in CHUNKS:
        op.create_index(op.f(f"ix_verdict_hashes_{chunk}"), "verdict_hashes", [chunk])
    op.create_table(
        "verdict_near_duplicates",
        sa.Column("id", _row_id(), autoincrement=True, nullable=False),
        sa.Column("verdict_id", _row_id(), nullable=False),
        sa.Column("earlier_verdict_id", _row_id(), nullable=False),
        sa.Column("distance", sa.Integer(), nullable=False),
        sa.Column("matching_frames", sa.Integer(), nullable=False),
        sa.Column("frames_compared", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["verdict_id"], ["verdicts.id"], name=op.f("fk_verdict_near_duplicates_verdict_id_verdicts")
        ),
        sa.ForeignKeyConstraint(
            ["earlier_verdict_id"],
            ["verdicts.id"],
            name=op.f("fk_verdict_near_duplicates_earlier_verdict_id_verdicts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_verdict_near_duplicates")),
    )
    op.create_index(op.f("ix_verdict_near_duplicates_verdict_id"), "verdict_near_duplicates", ["verdict_id"])
    op.create_index(
        op.f("ix_verdict_near_duplicates_earlier_verdict_id"), "verdict_near_duplicates", ["earlier_verdict_id"]
    )


def _guard(dialect: str) -> None:
    for table in NEW_TABLES:
        if dialect == "sqlite":
            for action in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER trg_{table}_no_{action.lower()} BEFORE {action} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END"
                )
            continue
        op.execute(
            f"CREATE TRIGGER trg_{table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {PG_REFUSE_FUNCTION}()"
        )
        op.execute(
            f"CREATE TRIGGER trg_{table}_no_truncate BEFORE TRUNCATE ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {PG_REFUSE_FUNCTION}()"
        )


def upgrade() -> None:
    dialect = _dialect()
    op.execute("DROP VIEW latest_verdicts")
    op.add_column("verdicts", sa.Column("reused_from", _row_id(), nullable=True))
    op.add_column("verdicts", sa.Column("content_credentials", _json(), nullable=True))
    op.add_column("verdicts", sa.Column("judged_with", sa.String(64), nullable=True))
    op.create_index(
        op.f("ix_verdicts_media_sha256_engine"), "verdicts", ["media_sha256", "engine_name", "engine_version"]
    )
    _create_latest_verdicts_view()
    _create_tables()
    _guard(dialect)


def downgrade() -> None:
    _dialect()
    for table in reversed(NEW_TABLES):
        op.drop_table(table)  # its triggers go with it
    op.execute("DROP VIEW latest_verdicts")
    op.drop_index(op.f("ix_verdicts_media_sha256_engine"), table_name="verdicts")
    op.drop_column("verdicts", "judged_with")
    op.drop_column("verdicts", "content_credentials")
    op.drop_column("verdicts", "reused_from")
    _create_latest_verdicts_view()
