"""VerdictRepository against real SQLite and PostgreSQL databases migrated by the real migrations."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from deepsift.daemon.records import EngineIdentity, VerdictRecord
from deepsift.daemon.repository import SavedVerdict, VerdictRepository
from deepsift.engines.manifest import Calibration, EngineManifest

pytestmark = pytest.mark.integration

MakeVerdict = Callable[..., VerdictRecord]
TABLES = ("verdicts", "verdict_frames", "verdict_tracks", "verdict_masks")


def row_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {table: connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() for table in TABLES}


@pytest.fixture
def repository(db_engine: Engine) -> VerdictRepository:
    return VerdictRepository(db_engine)


def test_save_then_get_round_trips_a_full_verdict(repository: VerdictRepository, make_verdict: MakeVerdict) -> None:
    # Given a verdict with frames (with and without boxes), tracks and masks
    record = make_verdict()
    before = datetime.now(UTC) - timedelta(minutes=1)
    # When it is saved and read back
    saved = repository.save(record)
    stored = repository.get(saved.id)
    # Then every field and child comes back in order, and the database stamped a UTC time
    assert saved.created
    assert replace(stored, created_at=None) == record
    assert stored.created_at is not None and stored.created_at.tzinfo is not None
    assert before <= stored.created_at <= datetime.now(UTC) + timedelta(minutes=1)


def test_an_explicit_created_at_is_kept_as_the_same_instant(
    repository: VerdictRepository, make_verdict: MakeVerdict
) -> None:
    # Given a verdict stamped by the pipeline in a non-UTC zone
    moment = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
    # When it is stored and read back
    stored = repository.get(repository.save(make_verdict(created_at=moment)).id)
    # Then it is the same instant, expressed in UTC
    assert stored.created_at == moment
    assert stored.created_at.utcoffset() == timedelta(0)


def test_get_of_an_unknown_id_raises_key_error(repository: VerdictRepository) -> None:
    with pytest.raises(KeyError):
        repository.get(2**40)


def test_resaving_the_same_job_for_the_same_engine_stores_nothing(
    repository: VerdictRepository, db_engine: Engine, make_verdict: MakeVerdict
) -> None:
    # Given a saved verdict
    record = make_verdict()
    first = repository.save(record)
    counts = row_counts(db_engine)
    # When the same job is delivered again to the same engine, even with a different outcome
    again = repository.save(replace(record, p_fake=0.1, label="real", frames=record.frames[:1]))
    # Then the existing row is reported and no table grows
    assert again == SavedVerdict(first.id, created=False)
    assert row_counts(db_engine) == counts
    assert repository.get(first.id).p_fake == record.p_fake


def test_a_lost_race_returns_the_winners_row(
    repository: VerdictRepository, db_engine: Engine, make_verdict: MakeVerdict, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given another daemon saved the job after this one looked and found nothing
    record = make_verdict()
    winner = repository.save(record)
    real_find_id = repository.find_id
    lookups: list[str] = []

    def find_nothing_at_first(job_id: str, engine: EngineIdentity) -> int | None:
        lookups.append(job_id)
        return None if len(lookups) == 1 else real_find_id(job_id, engine)

    monkeypatch.setattr(repository, "find_id", find_nothing_at_first)
    counts = row_counts(db_engine)
    # When this daemon inserts and hits the unique constraint
    loser = repository.save(record)
    # Then it rolls back its children too and returns the winner's id
    assert loser == SavedVerdict(winner.id, created=False)
    assert len(lookups) == 2
    assert row_counts(db_engine) == counts


def test_a_new_engine_version_adds_a_row_and_becomes_the_latest(
    repository: VerdictRepository, make_verdict: MakeVerdict
) -> None:
    # Given a job judged by engine version 1
    old = make_verdict(engine_version=1)
    old_id = repository.save(old).id
    count = repository.count()
    # When it is re-scored by version 2
    new = make_verdict(job_id=old.job_id, engine_version=2, p_fake=0.125, label="real")
    saved = repository.save(new)
    # Then history keeps both and the latest view returns the new one
    assert saved.created and saved.id > old_id
    assert repository.count() == count + 1
    latest = repository.latest_for_job(old.job_id)
    assert latest is not None and replace(latest, created_at=None) == new
    assert repository.get(old_id).engine.version == 1


def test_latest_for_a_job_never_seen_is_none(repository: VerdictRepository) -> None:
    assert repository.latest_for_job("no-such-job") is None


def test_find_id_tells_whether_this_engine_judged_the_job(
    repository: VerdictRepository, make_verdict: MakeVerdict
) -> None:
    record = make_verdict()
    saved = repository.save(record)
    assert repository.find_id(record.job_id, record.engine) == saved.id
    assert repository.find_id(record.job_id, EngineIdentity(record.engine.name, 99, "ef" * 32)) is None


@pytest.mark.parametrize("status", ["error", "abstained"])
def test_verdicts_without_scores_are_stored_with_sql_nulls(
    repository: VerdictRepository, db_engine: Engine, make_verdict: MakeVerdict, status: str
) -> None:
    # Given an error or abstained verdict with no scores, label, class probabilities or children
    record = VerdictRecord(
        job_id=make_verdict().job_id,
        source="scan",
        media_uri="file:///media/broken.mp4",
        status=status,  # type: ignore[arg-type]
        engine=EngineIdentity("sd2-vit-tiny", 1, "ab" * 32),
        code="corrupt_media" if status == "error" else "no_face",
        detail="moov atom not found",
    )
    # When it is saved
    saved = repository.save(record)
    # Then it round-trips and the missing scores are SQL NULL, not JSON null
    assert replace(repository.get(saved.id), created_at=None) == record
    with db_engine.connect() as connection:
        nulls = connection.execute(
            text("SELECT p_fake IS NULL, class_probs IS NULL, label IS NULL FROM verdicts WHERE id = :id"),
            {"id": saved.id},
        ).one()
    assert all(nulls)


def test_an_unknown_status_is_refused_by_the_database(
    repository: VerdictRepository, db_engine: Engine, make_verdict: MakeVerdict
) -> None:
    counts = row_counts(db_engine)
    with pytest.raises(IntegrityError):
        repository.save(make_verdict(status="maybe"))
    assert row_counts(db_engine) == counts


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE verdicts SET label = 'real' WHERE id = :id",
        "DELETE FROM verdicts WHERE id = :id",
        "UPDATE verdict_frames SET p_fake = 0 WHERE verdict_id = :id",
        "DELETE FROM verdict_frames WHERE verdict_id = :id",
        "UPDATE verdict_tracks SET p_fake = 0 WHERE verdict_id = :id",
        "DELETE FROM verdict_masks WHERE verdict_id = :id",
    ],
)
def test_the_database_refuses_to_change_stored_verdicts(
    repository: VerdictRepository, db_engine: Engine, make_verdict: MakeVerdict, statement: str
) -> None:
    # Given a stored verdict
    record = make_verdict()
    saved = repository.save(record)
    # When anyone tries to change or remove it (or its children) behind the repository's back
    with pytest.raises(IntegrityError, match="append-only"), db_engine.begin() as connection:
        connection.execute(text(statement), {"id": saved.id})
    # Then the database refused and the verdict is intact
    assert replace(repository.get(saved.id), created_at=None) == record


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # SQLite has no TRUNCATE
def test_postgresql_refuses_truncate(db_engine: Engine) -> None:
    with pytest.raises(IntegrityError, match="append-only"), db_engine.begin() as connection:
        connection.execute(text("TRUNCATE verdict_masks"))


# --- engines ---------------------------------------------------------------------------------------------------


@pytest.fixture
def served_manifest(engine_manifest):
    """``served_manifest(name)``: tests name engines uniquely, as the database is shared and engines append-only."""

    def make(name: str, artifact_sha256: str = "c" * 64) -> EngineManifest:
        return engine_manifest(
            name,
            version=1,
            artifact_sha256=artifact_sha256,
            calibration=Calibration(method="isotonic", logits=(-1.0, 1.0), probabilities=(0.2, 0.7)),
            threshold=0.61,
            evaluation={"auc": 0.97},
        )

    return make


def test_an_engine_is_recorded_once_and_verdicts_join_to_it(
    repository: VerdictRepository, db_engine: Engine, make_verdict: MakeVerdict, served_manifest
) -> None:
    # Given an engine recorded twice (two daemons loading it) and a verdict it made
    manifest = served_manifest(f"demo-{uuid.uuid4().hex}")
    assert [repository.record_engine(manifest), repository.record_engine(manifest)] == [True, False]
    identity = EngineIdentity(manifest.name, manifest.version, manifest.artifact_sha256)
    repository.save(make_verdict(job_id="j1", engine=identity))
    # When verdicts are joined to engines in SQL
    with db_engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT v.job_id, e.recipe, e.backend, e.threshold FROM verdicts v JOIN engines e "
                "ON e.name = v.engine_name AND e.version = v.engine_version "
                "AND e.artifact_sha256 = v.engine_artifact_sha256 WHERE e.name = :name"
            ),
            {"name": manifest.name},
        ).all()
    # Then the verdict finds exactly its engine, and the stored manifest reads back equal
    assert [tuple(r) for r in rows] == [("j1", "demo-tiny", "onnxruntime", 0.61)]
    assert [m for m in repository.engine_manifests() if m.name == manifest.name] == [manifest]


def test_a_rebuilt_artifact_under_the_same_version_is_a_different_engine(
    repository: VerdictRepository, served_manifest
) -> None:
    # Given two stores that built "demo v1" from different weights; When both are recorded; Then both rows exist
    name = f"demo-{uuid.uuid4().hex}"
    assert repository.record_engine(served_manifest(name, artifact_sha256="c" * 64))
    assert repository.record_engine(served_manifest(name, artifact_sha256="d" * 64))
    assert [m.artifact_sha256[0] for m in repository.engine_manifests() if m.name == name] == ["c", "d"]


def test_the_database_refuses_to_change_a_recorded_engine(
    repository: VerdictRepository, db_engine: Engine, served_manifest
) -> None:
    repository.record_engine(served_manifest(f"demo-{uuid.uuid4().hex}"))
    for statement in ("UPDATE engines SET threshold = 0.1", "DELETE FROM engines"):
        with pytest.raises(IntegrityError, match="append-only"), db_engine.begin() as connection:
            connection.execute(text(statement))


# --- values neither database can hold: made safe here, whatever path they came by ----------------------

UNSAFE_JOB_ID = os.fsdecode(b"scan-\xff\xfe-clip.mp4")  # a file name that is not UTF-8: surrogate escapes


def test_nul_surrogates_and_non_finite_numbers_are_stored_safely(
    repository: VerdictRepository, make_verdict: MakeVerdict
) -> None:
    # Given a verdict carrying NUL, lone surrogates and NaN/Infinity in its text and JSON (as `daemon scan`
    # of an odd file name, or an exception message, can produce)
    job_id = f"{UNSAFE_JOB_ID}-{uuid.uuid4().hex}"
    record = make_verdict(
        job_id=job_id,
        media_uri=f"file:///media/{UNSAFE_JOB_ID}\x00",
        detail="ValueError('\x00 and \ud800')",
        class_probs={"real": float("nan"), "synthetic": 0.5},
        timings_ms={"decode": float("inf")},
        metadata={"k\x00": ["v\x00", float("-inf"), "\udc80"], "ok": {"n": 1, "s": "é😀"}},
    )
    # When it is saved and read back
    saved = repository.save(record)
    stored = repository.get(saved.id)
    # Then NUL and lone surrogates are U+FFFD, non-finite numbers in JSON are null, the rest is unchanged
    assert stored.job_id == job_id.replace("\udcff", "\ufffd").replace("\udcfe", "\ufffd")
    assert stored.media_uri == "file:///media/scan-\ufffd\ufffd-clip.mp4\ufffd"
    assert stored.detail == "ValueError('\ufffd and \ufffd')"
    assert stored.class_probs == {"real": None, "synthetic": 0.5}
    assert stored.timings_ms == {"decode": None}
    assert stored.metadata == {"k\ufffd": ["v\ufffd", None, "\ufffd"], "ok": {"n": 1, "s": "é😀"}}
    assert replace(stored, created_at=None, job_id=job_id) == replace(
        record, media_uri=stored.media_uri, detail=stored.detail, class_probs=stored.class_probs,
        timings_ms=stored.timings_ms, metadata=stored.metadata,
    )  # fmt: skip
    # and the job is found, and a re-delivery stored once, under the id it was given
    assert repository.find_id(job_id, record.engine) == saved.id
    assert repository.save(record) == SavedVerdict(saved.id, created=False)
    latest = repository.latest_for_job(job_id)
    assert latest is not None and latest.metadata == stored.metadata
