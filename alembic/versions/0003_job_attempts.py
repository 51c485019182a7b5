"""The poison-job guard's record of deliveries started.

- ``job_attempts``: one row per Kafka message a `daemon run` started (topic, partition, offset), with the
  producer's job id when it was readable, how many deliveries started, and when the first and last did.
  A message whose deliveries keep starting without a verdict is killing the daemons that take it; the
  next delivery answers it with a ``poison_job`` error verdict instead of trying it again.
  Not append-only: rows are counted up and deleted once their offsets are committed (or a day old).

Hand-written and frozen, like 0001 and 0002: it repeats DDL instead of importing ``daemon.models``.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_attempts",
        sa.Column("kafka_topic", sa.Text(), nullable=False),
        sa.Column("kafka_partition", sa.Integer(), nullable=False),
        sa.Column("kafka_offset", sa.BigInteger(), nullable=False),
        sa.Column("job_id", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("first_started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_started_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("kafka_topic", "kafka_partition", "kafka_offset", name=op.f("pk_job_attempts")),
    )
    op.create_index(op.f("ix_job_attempts_last_started_at"), "job_attempts", ["last_started_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_job_attempts_last_started_at"), table_name="job_attempts")
    op.drop_table("job_attempts")
