"""structlog set-up of the daemon: JSON lines for machines, readable lines on a terminal, job ids bound per job.

The set-up itself is ``engines.logs`` (the trainer uses it too); stdlib ``logging`` records of alembic,
kafka-python and SQLAlchemy go through the same renderer, so ``log_format = "json"`` gives JSON lines only."""

from __future__ import annotations

from deepsift.engines.logs import configure_logging, is_configured, json_logs

__all__ = ["configure_logging", "is_configured", "json_logs"]
