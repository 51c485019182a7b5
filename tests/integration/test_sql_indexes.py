"""Migration 0007's indexes: there after an upgrade on SQLite and PostgreSQL, gone after a downgrade, and chosen by
the planners for the queries they are for (real plans at 20,000 rows, no planner settings changed). And the deploy
guide's read-only analyst role on PostgreSQL, run as documented."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, inspect, make_url, text
from sqlalchemy.exc import DBAPIError

from deepsift.daemon.db import downgrade_database, make_database, upgrade_database

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

BOTH = {"ix_verdicts_engine_name_engine_version_created_at", "ix_verdicts_uploader", "ix_verdicts_serving_job_id_id"}
POSTGRESQL_ONLY = {"ix_verdicts_job_metadata"}
ROWS = 20000
NOW = datetime(2026, 12, 1, tzinfo=UTC)

ENGINE_IN_TIME = (
    "SELECT COUNT(*) FROM verdicts WHERE engine_name = 'eng-7' AND engine_version = 3 AND created_at >= :since"
)
UPLOADER = "SELECT id FROM verdicts WHERE job_metadata ->> 'uploader' = 'u-17'"
LATEST_PROBE = (
    "SELECT COUNT(*) FROM verdicts AS v WHERE v.created_at >= :since AND NOT EXISTS (SELECT 1 FROM verdicts AS newer "
    "WHERE newer.job_id = v.job_id AND newer.role = 'serving' AND newer.id > v.id)"
)


def _index_names(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            query = "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'verdicts'"
        else:
            query = "SELECT indexname FROM pg_indexes WHERE tablename = 'verdicts'"
        return set(connection.execute(text(query)).scalars())


def _fill(engine: Engine) -> None:
    """ROWS verdicts in the last hours: 40 engine versions, 200 uploaders, a shadow row in ten."""
    rows = [
        {"job": f"job-{i - (i % 10 == 0)}", "name": f"eng-{i % 10}", "version": 1 + (i // 10) % 4 + 10 * (i % 10 == 0),
         "role": "shadow" if i % 10 == 0 else "serving", "meta": json.dumps({"uploader": f"u-{i % 200}"}),
         "at": NOW - timedelta(seconds=ROWS - i)}
        for i in range(1, ROWS + 1)
    ]  # fmt: skip
    with engine.begin() as connection:
        connection.execute(
            text("INSERT INTO verdicts (job_id, source, media_uri, status, engine_name, engine_version, "
                 "engine_artifact_sha256, timings_ms, job_metadata, created_at, role) VALUES (:job, 'kafka', "
                 "'file:///m', 'ok', :name, :version, :sha, '{}', :meta, :at, :role)"),
            [{**row, "sha": "a" * 64} for row in rows],
        )  # fmt: skip
        connection.execute(text("ANALYZE"))


def _plan(engine: Engine, sql: str, params: dict[str, Any]) -> str:
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            found = connection.execute(text(f"EXPLAIN QUERY PLAN {sql}"), params).all()
            return "\n".join(str(row[-1]) for row in found)
        return "\n".join(connection.execute(text(f"EXPLAIN {sql}"), params).scalars())


@pytest.fixture
def filled(empty_database_url: str) -> Any:
    upgrade_database(empty_database_url, "0007")
    engine = make_database(empty_database_url)
    _fill(engine)
    yield empty_database_url, engine
    engine.dispose()


def test_the_indexes_exist_after_the_upgrade_and_go_with_the_downgrade(empty_database_url: str) -> None:
    # Given a database upgraded to 0007
    upgrade_database(empty_database_url, "0007")
    engine = make_database(empty_database_url)
    try:
        expected = BOTH | (POSTGRESQL_ONLY if engine.dialect.name == "postgresql" else set())
        # Then the indexes are there (the GIN one on PostgreSQL only)
        assert _index_names(engine) & (BOTH | POSTGRESQL_ONLY) == expected
        assert "engine_promotions" in inspect(engine).get_table_names()
        # When downgraded to 0006; Then they and the promotions table are gone, the older indexes stay
        downgrade_database(empty_database_url, "0006")
        names = _index_names(engine)
        assert names & (BOTH | POSTGRESQL_ONLY) == set() and "ix_verdicts_job_id_id" in names
        assert "engine_promotions" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_the_planner_uses_the_engine_and_time_index(filled: Any) -> None:
    # Given 20,000 verdicts of the last hours from 40 engine versions; When one version's recent verdicts are counted
    _, engine = filled
    plan = _plan(engine, ENGINE_IN_TIME, {"since": NOW - timedelta(hours=6)})
    # Then the plan reads the engine/time index (the created_at index would read every row)
    assert "ix_verdicts_engine_name_engine_version_created_at" in plan, plan
    with engine.connect() as connection:
        assert connection.execute(text(ENGINE_IN_TIME), {"since": NOW - timedelta(hours=6)}).scalar() == ROWS // 40


def test_the_planner_uses_the_uploader_expression_index(filled: Any) -> None:
    # Given verdicts from 200 uploaders; When one uploader's are asked for with the documented expression
    _, engine = filled
    plan = _plan(engine, UPLOADER, {})
    # Then the expression index answers, on both databases
    assert "ix_verdicts_uploader" in plan, plan
    with engine.connect() as connection:
        assert len(connection.execute(text(UPLOADER)).all()) == ROWS // 200


def test_the_newest_serving_probe_reads_the_serving_index(filled: Any) -> None:
    # Given verdicts with shadow rows among them; When the newest serving verdicts of the last minute are counted
    _, engine = filled
    plan = _plan(engine, LATEST_PROBE, {"since": NOW - timedelta(minutes=1)})
    # Then "is there a newer serving verdict of this job" is answered by the partial (job_id, id) index
    assert "ix_verdicts_serving_job_id_id" in plan, plan
    with engine.connect() as connection:
        assert connection.execute(text(LATEST_PROBE), {"since": NOW - timedelta(minutes=1)}).scalar() == 61


def test_containment_on_any_metadata_key_uses_the_gin_index_on_postgresql(filled: Any) -> None:
    # Given PostgreSQL (SQLite has no GIN index); When verdicts are found by metadata containment
    _, engine = filled
    if engine.dialect.name != "postgresql":
        return
    plan = _plan(engine, 'SELECT id FROM verdicts WHERE job_metadata @> \'{"uploader": "u-17"}\'', {})
    # Then the GIN index answers
    assert "ix_verdicts_job_metadata" in plan, plan


WRITES = (
    "INSERT INTO verdicts (job_id) VALUES ('x')",
    "UPDATE verdicts SET label = 'real'",
    "DELETE FROM verdicts",
    "INSERT INTO engine_promotions (engine_name) VALUES ('x')",
)


def _analyst_sql(database: str, role: str, login: str, owner: str) -> list[str]:
    """deploy/README.md's analyst-role block, with this test's names for the roles, the database and its owner."""
    doc = (ROOT / "deploy" / "README.md").read_text()
    block = re.search(r"## A read-only role for analysts.*?```pgsql\n(.*?)```", doc, flags=re.DOTALL)
    assert block is not None, "deploy/README.md has no analyst-role block"
    sql = re.sub(r"\bdeepsift_analyst\b", role, block[1])
    sql = re.sub(r"\balice\b", login, sql)
    sql = sql.replace("DATABASE deepsift ", f'DATABASE "{database}" ').replace("ROLE deepsift ", f"ROLE {owner} ")
    return [statement for statement in sql.split(";") if statement.strip()]


def _refused(engine: Engine, statement: str) -> str:
    with pytest.raises(DBAPIError) as refused, engine.begin() as connection:
        connection.execute(text("SET TRANSACTION READ WRITE"))  # the read-only default is no guard
        connection.execute(text(statement))
    return str(refused.value.orig)


def test_the_documented_analyst_role_reads_everything_and_changes_nothing(postgres_server: Any) -> None:
    # Given a database at 0006 with a verdict, and the documented analyst role and a login in it
    url = postgres_server.create_database()
    upgrade_database(url, "0006")
    owner_engine = create_engine(url, isolation_level="AUTOCOMMIT")
    suffix = uuid.uuid4().hex[:8]
    role, login, database = f"deepsift_analyst_{suffix}", f"alice_{suffix}", make_url(url).database
    analyst = create_engine(make_url(url).set(username=login))
    try:
        with owner_engine.connect() as connection:
            owner = connection.execute(text("SELECT current_user")).scalar_one()
            for statement in _analyst_sql(database, role, login, owner):
                connection.execute(text(statement))
        # When a later migration creates a table (engine_promotions) and a verdict is stored
        upgrade_database(url, "0007")
        _fill_one(owner_engine)
        # Then the analyst reads tables and views, old and new
        with analyst.connect() as connection:
            for relation in ("verdicts", "latest_verdicts", "review_queue", "engine_promotions", "engines"):
                connection.execute(text(f"SELECT COUNT(*) FROM {relation}")).scalar_one()
            assert connection.execute(text("SHOW default_transaction_read_only")).scalar_one() == "on"
        # And every change is refused for lack of privilege, even with the read-only default turned off
        for statement in WRITES:
            assert "permission denied" in _refused(analyst, statement)
    finally:
        analyst.dispose()
        with owner_engine.connect() as connection:
            connection.execute(text(f"DROP OWNED BY {login}, {role}"))  # its grants, default privileges included
            connection.execute(text(f"DROP ROLE IF EXISTS {login}"))
            connection.execute(text(f"DROP ROLE IF EXISTS {role}"))
        owner_engine.dispose()


def _fill_one(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(
            text("INSERT INTO verdicts (job_id, source, media_uri, status, engine_name, engine_version, "
                 "engine_artifact_sha256, timings_ms, job_metadata) VALUES ('analyst-1', 'scan', 'file:///a', 'ok', "
                 "'demo', 1, :sha, '{}', '{}')"),
            {"sha": "a" * 64},
        )  # fmt: skip
