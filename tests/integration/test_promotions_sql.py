"""Engine promotions in SQL (``engine_promotions``, migration 0007), on SQLite and PostgreSQL: the store's history
copied in once however often it is copied, the daemon's own switches beside it, "which version was current at T"
as a query (the README's, verbatim), and rows that cannot be changed."""

from __future__ import annotations

import re
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from deepsift.daemon.compose import Dependencies, open_engines
from deepsift.daemon.promotions import PromotionLog, history_key
from deepsift.daemon.repository import VerdictRepository
from deepsift.daemon.settings import Settings
from deepsift.daemon.stream.health import Health
from deepsift.daemon.stream.metrics import StreamMetrics
from deepsift.daemon.stream.runner import Watch
from deepsift.engines.manifest import EngineManifest
from deepsift.engines.store import EngineStore, Promotion

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"
# The README's query, with its engine name and time bound as parameters.
CURRENT_AT_T = """SELECT version, kind, occurred_at, actor, reason
FROM engine_promotions
WHERE engine_name = 'siglip2-b16' AND kind IN ('promote', 'rollback')
  AND occurred_at <= '2026-12-01 12:00:00+00:00'
ORDER BY occurred_at DESC, id DESC LIMIT 1;"""
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def _line(version: int, previous: int | None, minutes: float, action: str = "promote") -> Promotion:
    moment = (T0 + timedelta(minutes=minutes)).isoformat()
    return Promotion(version, previous, moment, "alice", f"{action} {version}", action)  # type: ignore[arg-type]


# 09:00 v1, 10:00 v2, 11:00 v3, 11:30 rollback to v2, 12:00:00.5 v4 (just after the README's T)
HISTORY = [_line(1, None, 0), _line(2, 1, 60), _line(3, 2, 120), _line(2, 3, 150, "rollback"), _line(4, 2, 180.01)]


def _name() -> str:
    return f"eng-{uuid.uuid4().hex[:8]}"


def test_copying_the_history_twice_adds_each_line_once(db_engine: Engine) -> None:
    # Given an engine's history of five lines
    log, name = PromotionLog(db_engine), _name()
    # When it is copied, then copied again with one more line
    first = log.copy_history(name, HISTORY[:4])
    second = log.copy_history(name, HISTORY)
    # Then the first copy added four rows, the second only the new line, and every row says what happened
    assert (first, second) == (4, 1)
    rows = log.rows(name)
    assert [(r["kind"], r["version"], r["previous_version"]) for r in rows] == [
        ("promote", 1, None), ("promote", 2, 1), ("promote", 3, 2), ("rollback", 2, 3), ("promote", 4, 2)
    ]  # fmt: skip
    assert rows[0]["occurred_at"] == T0 and rows[0]["actor"] == "alice" and rows[0]["reason"] == "promote 1"
    assert rows[3]["history_key"] == history_key(HISTORY[3])


def test_which_version_was_current_at_a_time(db_engine: Engine) -> None:
    # Given the history in SQL
    log, name = PromotionLog(db_engine), _name()
    log.copy_history(name, HISTORY)
    # When asked at times between and on the lines; Then the version promoted or rolled back to last answers
    at = {minutes: log.current_at(name, T0 + timedelta(minutes=minutes)) for minutes in (-1, 0, 59, 61, 149, 151)}
    assert at == {-1: None, 0: 1, 59: 1, 61: 2, 149: 3, 151: 2}


def test_the_readme_query_answers_which_version_was_current(db_engine: Engine) -> None:
    # Given the README's query, verbatim, and the history of an engine under the README's name
    shown = " ".join(README.read_text().split())
    assert " ".join(CURRENT_AT_T.split()) in shown, "the README's query differs from this test's"
    PromotionLog(db_engine).copy_history("siglip2-b16", HISTORY)  # a second copy (the other test run) adds nothing
    # When it runs (T = 12:00 UTC; v4 came half a second later); Then the rollback to v2 at 11:30 answers
    with db_engine.connect() as connection:
        row = connection.execute(text(CURRENT_AT_T)).mappings().one()
    assert (row["version"], row["kind"], row["reason"]) == (2, "rollback", "rollback 2")


def test_daemon_switches_are_rows_of_their_own(db_engine: Engine) -> None:
    # Given a history, and a replica switching twice
    log, name = PromotionLog(db_engine), _name()
    log.copy_history(name, HISTORY[:2])
    log.record_switch(name, 1, None, "pod-a:1", at=T0 + timedelta(seconds=5))
    log.record_switch(name, 2, 1, "pod-a:1", at=T0 + timedelta(minutes=60, seconds=5))
    # When the history is copied again
    assert log.copy_history(name, HISTORY[:2]) == 0
    # Then the switches stand between the promotions, and do not answer "which version was current"
    rows = log.rows(name)
    assert [(r["kind"], r["version"], r["replica"]) for r in rows] == [
        ("promote", 1, None), ("daemon_switch", 1, "pod-a:1"), ("promote", 2, None), ("daemon_switch", 2, "pod-a:1")
    ]  # fmt: skip
    assert log.current_at(name, T0 + timedelta(minutes=60, seconds=1)) == 2


def test_promotion_rows_cannot_be_changed_or_deleted(db_engine: Engine) -> None:
    # Given a promotion row
    log, name = PromotionLog(db_engine), _name()
    log.copy_history(name, HISTORY[:1])
    # When it is updated or deleted; Then the database refuses
    for statement in ("UPDATE engine_promotions SET version = 9 WHERE engine_name = :n",
                      "DELETE FROM engine_promotions WHERE engine_name = :n"):  # fmt: skip
        with pytest.raises(IntegrityError, match="append-only"), db_engine.begin() as connection:
            connection.execute(text(statement), {"n": name})
    assert [r["version"] for r in log.rows(name)] == [1]


def test_a_switch_row_with_a_history_key_is_refused(db_engine: Engine) -> None:
    # Given a daemon switch that claims to be a store line; When inserted; Then the check refuses it
    with pytest.raises(IntegrityError), db_engine.begin() as connection:
        connection.execute(
            text("INSERT INTO engine_promotions (engine_name, kind, version, occurred_at, history_key) "
                 "VALUES (:n, 'daemon_switch', 1, :t, 'x')"),
            {"n": _name(), "t": T0},
        )  # fmt: skip


def test_a_history_line_with_an_unreadable_time_is_left_out(db_engine: Engine) -> None:
    # Given a history whose second line's time is not ISO 8601
    log, name = PromotionLog(db_engine), _name()
    torn = Promotion(2, 1, "yesterday", None, None)
    # When copied; Then the readable lines go in and the daemon is not stopped by the other
    assert log.copy_history(name, [HISTORY[0], torn, HISTORY[2]]) == 2


def test_the_daemon_records_the_history_and_its_switches(
    database_url: str, db_engine: Engine, full_frame_store: EngineStore, tmp_path: Path
) -> None:
    # Given a store with v1 current and v2 built, and the daemon's engine watcher opened on it
    source = full_frame_store.path("tiny-full", full_frame_store.current_version("tiny-full"))
    manifest = EngineManifest.read(source)
    name, store = _name(), EngineStore(tmp_path / "engines")
    for _ in range(2):
        store.add(manifest.model_copy(update={"name": name}), source / manifest.artifact)
    store.promote(name, 1, reason="first")
    settings = Settings(database_url=database_url, engine_store=store.root, engine_name=name, engine_poll_s=3600)
    deps = Dependencies(Watch(Health(), StreamMetrics()), threading.Event(), wait=False)
    watcher = open_engines(settings, VerdictRepository(db_engine), StreamMetrics(), deps)
    try:
        # When v2 is promoted and the watcher looks
        store.promote(name, 2, reason="better")
        assert watcher.check()
    finally:
        watcher.stop()
    # Then SQL holds both promotions and both of this replica's switches, in order
    rows = PromotionLog(db_engine).rows(name)
    assert [(r["kind"], r["version"], r["previous_version"]) for r in rows] == [
        ("promote", 1, None), ("daemon_switch", 1, None), ("promote", 2, 1), ("daemon_switch", 2, 1)
    ]  # fmt: skip
    assert [r["reason"] for r in rows if r["kind"] == "promote"] == ["first", "better"]
    replicas = {r["replica"] for r in rows if r["kind"] == "daemon_switch"}
    assert len(replicas) == 1 and re.fullmatch(r".+:\d+", replicas.pop())
