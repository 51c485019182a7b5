"""The Alembic migrations against real databases: they match the ORM models and run both ways."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Integer, MetaData, inspect, text
from sqlalchemy.exc import IntegrityError

from deepsift.daemon.attempts import JobAttempts
from deepsift.daemon.db import alembic_config, current_revision, downgrade_database, make_database, upgrade_database
from deepsift.daemon.models import Base
from deepsift.daemon.records import VerdictRecord
from deepsift.daemon.repository import VerdictRepository

pytestmark = pytest.mark.integration

SCHEMA_TABLES = {"verdicts", "verdict_frames", "verdict_tracks", "verdict_masks", "engines", "job_attempts",
                 "verdict_hashes", "verdict_near_duplicates", "reviews"}  # fmt: skip
QUEUE_VIEWS = {"latest_verdicts", "review_queue"}  # 0005-0007
HEAD_VIEWS = QUEUE_VIEWS | {"latest_by_content", "verdict_flips"}  # 0008


def insert_old_verdict(engine: object, job_id: str) -> int:
    """A verdict row as any revision since 0001 holds it (the repository writes head's columns)."""
    with engine.begin() as connection:  # type: ignore[attr-defined]
        connection.execute(
            text(
                "INSERT INTO verdicts (job_id, source, media_uri, status, engine_name, engine_version, "
                "engine_artifact_sha256, timings_ms, job_metadata) VALUES (:job, 'scan', 'file:///a', 'ok', "
                "'demo', 1, :sha, '{}', '{}')"
            ),
            {"job": job_id, "sha": "a" * 64},
        )
        return connection.execute(text("SELECT id FROM verdicts WHERE job_id = :job"), {"job": job_id}).scalar_one()


def schema_differences(url: str, metadata: MetaData) -> list[object]:
    engine = make_database(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return compare_metadata(context, metadata)
    finally:
        engine.dispose()


def schema_objects(url: str) -> tuple[set[str], set[str]]:
    engine = make_database(url)
    try:
        inspector = inspect(engine)
        return set(inspector.get_table_names()), set(inspector.get_view_names())
    finally:
        engine.dispose()


def head_revision(url: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def test_the_orm_models_match_the_migrated_schema(database_url: str) -> None:
    # Given a database built by the migrations; When compared with the models; Then nothing differs
    assert schema_differences(database_url, Base.metadata) == []


def test_the_model_comparison_notices_a_drift(database_url: str) -> None:
    # Given models with a column the migrations never created
    drifted = MetaData(naming_convention=Base.metadata.naming_convention)
    for table in Base.metadata.tables.values():
        table.to_metadata(drifted)
    drifted.tables["verdicts"].append_column(Column("reviewer", Integer, nullable=True))
    # When compared; Then the missing column is reported
    differences = schema_differences(database_url, drifted)
    assert [diff[0] for diff in differences] == ["add_column"]


def test_a_new_database_has_no_revision(empty_database_url: str) -> None:
    assert current_revision(empty_database_url) is None


def test_upgrading_twice_is_harmless(empty_database_url: str) -> None:
    # Given a database upgraded to head
    upgrade_database(empty_database_url)
    objects = schema_objects(empty_database_url)
    # When it is upgraded again
    upgrade_database(empty_database_url)
    # Then it is still at head with the same tables and views
    assert current_revision(empty_database_url) == head_revision(empty_database_url)
    assert schema_objects(empty_database_url) == objects
    tables, views = objects
    assert tables >= SCHEMA_TABLES and views == HEAD_VIEWS


def test_downgrade_to_base_then_upgrade_rebuilds_a_working_schema(
    empty_database_url: str, make_verdict: Callable[..., VerdictRecord]
) -> None:
    # Given a migrated database
    upgrade_database(empty_database_url)
    # When it is downgraded to base
    downgrade_database(empty_database_url, "base")
    # Then every table and the view are gone
    tables, views = schema_objects(empty_database_url)
    assert tables & SCHEMA_TABLES == set() and views == set()
    assert current_revision(empty_database_url) is None
    # And after upgrading again, verdicts are stored and guarded as before
    upgrade_database(empty_database_url)
    engine = make_database(empty_database_url)
    try:
        saved = VerdictRepository(engine).save(make_verdict())
        with pytest.raises(IntegrityError, match="append-only"), engine.begin() as connection:
            connection.execute(text("DELETE FROM verdicts WHERE id = :id"), {"id": saved.id})
    finally:
        engine.dispose()


def test_0002_adds_the_decoder_columns_to_a_populated_0001_database_and_its_view(
    empty_database_url: str, make_verdict: Callable[..., VerdictRecord]
) -> None:
    # Given a database at 0001 holding a verdict
    upgrade_database(empty_database_url, "0001")
    engine = make_database(empty_database_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO verdicts (job_id, source, media_uri, status, engine_name, engine_version, "
                    "engine_artifact_sha256, timings_ms, job_metadata) VALUES ('old', 'scan', 'file:///a', 'ok', "
                    "'demo', 1, :sha, '{}', '{}')"
                ),
                {"sha": "a" * 64},
            )
        # When it is upgraded to head
        upgrade_database(empty_database_url)
        # Then the old verdict is still there, readable through the view with the new (empty) decoder columns
        with engine.connect() as connection:
            row = connection.execute(text("SELECT job_id, decoder, decoder_note FROM latest_verdicts")).one()
        assert tuple(row) == ("old", None, None)
        # And a new verdict keeps its decoder facts
        repository = VerdictRepository(engine)
        saved = repository.save(make_verdict(job_id="new", decoder="pyav", decoder_note="variable_frame_rate"))
        assert (repository.get(saved.id).decoder, repository.get(saved.id).decoder_note) == (
            "pyav",
            "variable_frame_rate",
        )
    finally:
        engine.dispose()


def test_downgrading_0002_removes_engines_and_decoder_columns_and_keeps_verdicts(empty_database_url: str) -> None:
    # Given a database at head; When downgraded to 0001
    upgrade_database(empty_database_url)
    downgrade_database(empty_database_url, "0001")
    # Then the engines table is gone, the view still works, and the verdict columns are 0001's
    tables, views = schema_objects(empty_database_url)
    assert "engines" not in tables and views == {"latest_verdicts"}
    engine = make_database(empty_database_url)
    try:
        columns = {c["name"] for c in inspect(engine).get_columns("verdicts")}
        assert not columns & {"decoder", "decoder_note"}
        with engine.connect() as connection:
            connection.execute(text("SELECT * FROM latest_verdicts")).all()
    finally:
        engine.dispose()


def test_0003_adds_job_attempts_to_a_populated_0002_database(
    empty_database_url: str, make_verdict: Callable[..., VerdictRecord]
) -> None:
    # Given a database at 0002 holding a verdict
    upgrade_database(empty_database_url, "0002")
    engine = make_database(empty_database_url)
    try:
        saved = insert_old_verdict(engine, "job-at-0002")
        assert "job_attempts" not in schema_objects(empty_database_url)[0]
        # When it is upgraded to head
        upgrade_database(empty_database_url)
        # Then the verdict is still there, and deliveries are counted per message
        assert VerdictRepository(engine).get(saved).job_id == "job-at-0002"
        attempts = JobAttempts(engine)
        assert [attempts.started("jobs", 0, 9, "j-1") for _ in range(2)] == [1, 2]
        # and the table is not append-only like the verdicts: finished rows can be deleted
        assert attempts.forget_below({("jobs", 0): 10}) == 1
    finally:
        engine.dispose()


def test_downgrading_0003_removes_job_attempts_and_keeps_verdicts(
    empty_database_url: str, make_verdict: Callable[..., VerdictRecord]
) -> None:
    # Given a database at head with a verdict and a counted delivery
    upgrade_database(empty_database_url)
    engine = make_database(empty_database_url)
    try:
        saved = VerdictRepository(engine).save(make_verdict())
        JobAttempts(engine).started("jobs", 0, 1, None)
        # When downgraded to 0002
        downgrade_database(empty_database_url, "0002")
        # Then job_attempts is gone (its index too), the verdict and the view are left
        tables, views = schema_objects(empty_database_url)
        assert "job_attempts" not in tables and {"verdicts", "engines"} <= tables and views == {"latest_verdicts"}
        with engine.connect() as connection:
            found = connection.execute(text("SELECT id FROM latest_verdicts WHERE id = :id"), {"id": saved.id})
            assert found.scalar_one() == saved.id
        # and upgrading again brings an empty job_attempts back
        upgrade_database(empty_database_url)
        assert JobAttempts(engine).attempts("jobs", 0, 1) == 0
    finally:
        engine.dispose()


def test_0004_adds_upload_signals_to_a_populated_0003_database(
    empty_database_url: str, make_verdict: Callable[..., VerdictRecord]
) -> None:
    # Given a database at 0003 holding a verdict
    upgrade_database(empty_database_url, "0003")
    engine = make_database(empty_database_url)
    try:
        old = insert_old_verdict(engine, "job-at-0003")
        # When it is upgraded to head
        upgrade_database(empty_database_url)
        # Then the old verdict reads back with no signals, through the view too
        repository = VerdictRepository(engine)
        record = repository.get(old)
        assert (record.reused_from, record.content_credentials, record.hashes, record.near_duplicates) == (
            None, None, (), ()
        )  # fmt: skip
        with engine.connect() as connection:
            row = connection.execute(text("SELECT reused_from, content_credentials FROM latest_verdicts")).one()
        assert tuple(row) == (None, None)
        # And new verdicts carry hashes (the full 64-bit range), links and credentials, append-only
        from deepsift.daemon.records import FrameHashRecord, NearDuplicateRecord

        hashes = (FrameHashRecord(0, (1 << 64) - 1), FrameHashRecord(3, 0x0123456789ABCDEF))
        credentials = {"state": "invalid", "errors": ["assertion.dataHash.mismatch"]}
        saved = repository.save(make_verdict(hashes=hashes, near_duplicates=(NearDuplicateRecord(old, 3, 1, 2),),
                                             content_credentials=credentials, reused_from=old))  # fmt: skip
        record = repository.get(saved.id)
        assert record.hashes == hashes and record.near_duplicates == (NearDuplicateRecord(old, 3, 1, 2),)
        assert record.content_credentials == credentials and record.reused_from == old
        for table in ("verdict_hashes", "verdict_near_duplicates"):
            with pytest.raises(Exception, match="append-only"), engine.begin() as connection:
                connection.execute(text(f"DELETE FROM {table}"))
    finally:
        engine.dispose()


def test_downgrading_0004_removes_the_signals_and_keeps_verdicts(
    empty_database_url: str, make_verdict: Callable[..., VerdictRecord]
) -> None:
    upgrade_database(empty_database_url)
    engine = make_database(empty_database_url)
    try:
        from deepsift.daemon.records import FrameHashRecord

        saved = VerdictRepository(engine).save(make_verdict(hashes=(FrameHashRecord(0, 5),)))
        engine.dispose()
        downgrade_database(empty_database_url, "0003")
        tables, views = schema_objects(empty_database_url)
        assert not tables & {"verdict_hashes", "verdict_near_duplicates"} and views == {"latest_verdicts"}
        columns = {c["name"] for c in inspect(engine).get_columns("verdicts")}
        assert not columns & {"reused_from", "content_credentials"}
        with engine.connect() as connection:
            found = connection.execute(text("SELECT id FROM latest_verdicts WHERE id = :id"), {"id": saved.id})
            assert found.scalar_one() == saved.id
        upgrade_database(empty_database_url)
        assert VerdictRepository(engine).get(saved.id).hashes == ()
    finally:
        engine.dispose()


def test_0005_adds_reviews_and_roles_to_a_populated_0004_database(
    empty_database_url: str, make_verdict: Callable[..., VerdictRecord]
) -> None:
    # Given a database at 0004 holding a verdict
    upgrade_database(empty_database_url, "0004")
    engine = make_database(empty_database_url)
    try:
        old = insert_old_verdict(engine, "job-at-0004")
        # When it is upgraded to head
        upgrade_database(empty_database_url)
        # Then the old verdict is a serving verdict, shown in latest_verdicts with its own label as the final one
        repository = VerdictRepository(engine)
        assert repository.get(old).role == "serving"
        with engine.connect() as connection:
            row = connection.execute(
                text("SELECT id, role, final_label, review_id FROM latest_verdicts WHERE job_id = 'job-at-0004'")
            ).one()
        assert tuple(row) == (old, "serving", None, None)
        # And a shadow verdict of the same job stays out of latest_verdicts, and a review overrides the label
        from deepsift.daemon.reviews import Reviews

        repository.save(make_verdict(job_id="job-at-0004", engine_version=9, role="shadow"))
        Reviews(repository).add(old, "fake", "ann")
        with engine.connect() as connection:
            rows = connection.execute(
                text("SELECT id, final_label FROM latest_verdicts WHERE job_id = 'job-at-0004'")
            ).all()
        assert [tuple(r) for r in rows] == [(old, "fake")]
    finally:
        engine.dispose()


def test_downgrading_0005_removes_reviews_and_shadow_roles_and_keeps_verdicts(
    empty_database_url: str, make_verdict: Callable[..., VerdictRecord]
) -> None:
    upgrade_database(empty_database_url)
    engine = make_database(empty_database_url)
    try:
        from deepsift.daemon.reviews import Reviews

        repository = VerdictRepository(engine)
        saved = repository.save(make_verdict())
        Reviews(repository).add(saved.id, "real", "ann")
        engine.dispose()
        downgrade_database(empty_database_url, "0004")
        tables, views = schema_objects(empty_database_url)
        assert "reviews" not in tables and views == {"latest_verdicts"}
        assert "role" not in {c["name"] for c in inspect(engine).get_columns("verdicts")}
        with engine.connect() as connection:
            found = connection.execute(text("SELECT id FROM latest_verdicts WHERE id = :id"), {"id": saved.id})
            assert found.scalar_one() == saved.id
        upgrade_database(empty_database_url)
        assert Reviews(VerdictRepository(engine)).for_job(repository.get(saved.id).job_id) == []
    finally:
        engine.dispose()


def test_downgrading_0005_is_refused_while_shadow_verdicts_are_stored(
    empty_database_url: str, make_verdict: Callable[..., VerdictRecord]
) -> None:
    upgrade_database(empty_database_url)
    engine = make_database(empty_database_url)
    try:
        VerdictRepository(engine).save(make_verdict(role="shadow"))
    finally:
        engine.dispose()
    # (from 0005 itself: SQLite commits each DDL statement, so a refusal met on the way down from a later head
    # would leave the database at 0005 there and at head on PostgreSQL)
    downgrade_database(empty_database_url, "0005")
    with pytest.raises(RuntimeError, match="1 shadow verdicts are stored"):
        downgrade_database(empty_database_url, "0004")
    assert current_revision(empty_database_url) == "0005"


def test_0006_adds_the_decisive_track_to_a_populated_0005_database(
    empty_database_url: str, make_verdict: Callable[..., VerdictRecord]
) -> None:
    # Given a database at 0005 holding a verdict with a review, so it is in latest_verdicts and out of the queue
    upgrade_database(empty_database_url, "0005")
    engine = make_database(empty_database_url)
    try:
        old = insert_old_verdict(engine, "job-at-0005")
        with engine.begin() as connection:
            connection.execute(
                text("INSERT INTO reviews (verdict_id, job_id, label, reviewer) VALUES (:id, :job, 'fake', 'ann')"),
                {"id": old, "job": "job-at-0005"},
            )
        # When it is upgraded to head
        upgrade_database(empty_database_url)
        # Then the old verdict reads back with no decisive track, through both views too, its review kept
        repository = VerdictRepository(engine)
        assert (repository.get(old).decisive_track_id, repository.get(old).decision) == (None, None)
        with engine.connect() as connection:
            row = connection.execute(
                text("SELECT decisive_track_id, decision, final_label FROM latest_verdicts WHERE id = :id"), {"id": old}
            ).one()
            connection.execute(text("SELECT * FROM review_queue")).all()
        assert tuple(row) == (None, None, "fake")
        assert schema_objects(empty_database_url)[1] == HEAD_VIEWS
        # And a new verdict keeps which track decided and why
        saved = repository.save(make_verdict(job_id="new", decisive_track_id=7, decision="max_of_covered_tracks"))
        record = repository.get(saved.id)
        assert (record.decisive_track_id, record.decision) == (7, "max_of_covered_tracks")
    finally:
        engine.dispose()


def test_downgrading_0006_removes_the_decisive_track_and_keeps_verdicts_and_views(
    empty_database_url: str, make_verdict: Callable[..., VerdictRecord]
) -> None:
    # Given a database at head with a verdict that names its decisive track
    upgrade_database(empty_database_url)
    engine = make_database(empty_database_url)
    try:
        saved = VerdictRepository(engine).save(make_verdict(decisive_track_id=3, decision="coverage_weighted_fallback"))
        engine.dispose()
        # When downgraded to 0005
        downgrade_database(empty_database_url, "0005")
        # Then the columns are gone, the verdict is still there, through latest_verdicts, and the queue still works
        assert current_revision(empty_database_url) == "0005"
        assert schema_objects(empty_database_url)[1] == QUEUE_VIEWS
        columns = {c["name"] for c in inspect(engine).get_columns("verdicts")}
        assert not columns & {"decisive_track_id", "decision"}
        with engine.connect() as connection:
            found = connection.execute(text("SELECT id FROM latest_verdicts WHERE id = :id"), {"id": saved.id})
            assert found.scalar_one() == saved.id
            connection.execute(text("SELECT * FROM review_queue")).all()
        # and upgrading again reads it back without them
        upgrade_database(empty_database_url)
        assert VerdictRepository(engine).get(saved.id).decision is None
    finally:
        engine.dispose()
