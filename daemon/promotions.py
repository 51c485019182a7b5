"""Engine promotions in SQL (``engine_promotions``, migration 0007): which version was current, and which served.

The engine store's ``promotions.jsonl`` is the truth about ``current`` (``trainer engines promote|rollback``
writes it, on a host that may have no database). The daemon copies it in when it opens an engine and on each hot
reload: every line becomes a ``promote`` or ``rollback`` row keyed by (engine name, ``history_key`` = the line's
time, action and version), inserted with ON CONFLICT DO NOTHING, so copying the same history again, from any
number of replicas at once, adds nothing. The daemon's own switches are ``daemon_switch`` rows naming the replica
(host name and process id): a promotion is a decision, a switch is when a replica acted on it.

Times are stored in UTC. "Which version of engine X was current at T" is :meth:`PromotionLog.current_at`, the same
query the README shows.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import Engine, select
from sqlalchemy.dialects import postgresql, sqlite

from deepsift.daemon.db import translate_outages
from deepsift.daemon.models import EnginePromotion
from deepsift.engines.store import EngineStore, Promotion

log = structlog.get_logger(__name__)

DAEMON_SWITCH = "daemon_switch"
STORE_KINDS = ("promote", "rollback")  # the store's actions: they move `current`
_UPSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def replica_id() -> str:
    """This daemon process: the host name (a Kubernetes pod's name) and the process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


def history_key(promotion: Promotion) -> str:
    """The identity of one history line: its time as written (microseconds, under the store's lock), action and
    version. It does not depend on the line's position, so a log whose torn last line is skipped keys the same."""
    return f"{promotion.time} {promotion.action} v{promotion.version}"


def _utc(moment: datetime) -> datetime:
    """Aware UTC; a naive time (SQLite hands back what it stored) is taken as UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _history_row(name: str, promotion: Promotion) -> dict[str, object] | None:
    """The row of one history line; None (logged) for a line whose time cannot be read, which is left out."""
    try:
        occurred_at = _utc(datetime.fromisoformat(promotion.time))
    except (TypeError, ValueError):
        log.warning("promotion_line_skipped", engine=name, time=promotion.time, version=promotion.version)
        return None
    return {
        "engine_name": name,
        "kind": promotion.action,
        "version": promotion.version,
        "previous_version": promotion.previous_version,
        "occurred_at": occurred_at,
        "actor": promotion.user,
        "reason": promotion.reason,
        "history_key": history_key(promotion),
    }


class PromotionLog:
    """``engine_promotions`` on the daemon's database; outages surface as ``RetryableError``."""

    def __init__(self, engine: Engine) -> None:
        dialect = engine.dialect.name
        if dialect not in _UPSERTS:
            raise NotImplementedError(f"the promotion upsert is written for SQLite and PostgreSQL, not {dialect}")
        self._engine = engine
        self._insert = _UPSERTS[dialect]

    def copy_history(self, name: str, history: Sequence[Promotion]) -> int:
        """Insert the store history lines of engine ``name`` not yet in SQL; how many were new."""
        rows = [row for p in history if p.action in STORE_KINDS and (row := _history_row(name, p)) is not None]
        if not rows:
            return 0
        statement = self._insert(EnginePromotion).values(rows)
        statement = statement.on_conflict_do_nothing(index_elements=["engine_name", "history_key"])
        with translate_outages(), self._engine.begin() as connection:  # RETURNING: psycopg's rowcount is -1 here
            return len(connection.execute(statement.returning(EnginePromotion.id)).all())

    def record_switch(
        self, name: str, version: int, previous_version: int | None, replica: str, at: datetime | None = None
    ) -> None:
        """A daemon replica serves ``version`` from now (or ``at``); ``previous_version`` None at its start."""
        row = {"engine_name": name, "kind": DAEMON_SWITCH, "version": version, "previous_version": previous_version,
               "occurred_at": _utc(at or datetime.now(UTC)), "replica": replica}  # fmt: skip
        with translate_outages(), self._engine.begin() as connection:
            connection.execute(self._insert(EnginePromotion).values(row))

    def current_at(self, name: str, at: datetime) -> int | None:
        """The version the store's ``current`` named at ``at``: the newest promotion or rollback at or before it."""
        query = (
            select(EnginePromotion.version)
            .where(EnginePromotion.engine_name == name, EnginePromotion.kind.in_(STORE_KINDS))
            .where(EnginePromotion.occurred_at <= _utc(at))
            .order_by(EnginePromotion.occurred_at.desc(), EnginePromotion.id.desc())
            .limit(1)
        )
        with translate_outages(), self._engine.connect() as connection:
            return connection.execute(query).scalar()

    def rows(self, name: str) -> list[dict[str, Any]]:
        """Every row of engine ``name`` as a mapping, in the order they happened (store rows and switches
        interleaved); ``occurred_at`` in aware UTC on both databases."""
        table = EnginePromotion.__table__
        query = select(table).where(table.c.engine_name == name).order_by(table.c.occurred_at, table.c.id)
        with translate_outages(), self._engine.connect() as connection:
            found = [dict(row) for row in connection.execute(query).mappings()]
        return [{**row, "occurred_at": _utc(row["occurred_at"])} for row in found]


def record_serving(
    promotions: PromotionLog, store: EngineStore, name: str, version: int, previous: int | None, replica: str
) -> None:
    """What the daemon records before it serves ``version`` of ``name`` (at start, ``previous`` None, and on each
    hot reload): the store's history so far, then its own switch."""
    copied = promotions.copy_history(name, store.history(name))
    promotions.record_switch(name, version, previous, replica)
    log.info("engine_promotions_recorded", engine=name, version=version, previous_version=previous,
             history_rows_added=copied, replica=replica)  # fmt: skip
