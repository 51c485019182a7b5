"""Migration 0008 on a database holding rows written by 0007's schema, on SQLite and PostgreSQL: the decision and
the manipulation class are backfilled from the label, masks asked for where masks are stored, the views answer
per content and per version pair, the verdicts stay append-only, and the way down keeps the verdicts."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from deepsift.daemon.db import current_revision, downgrade_database, make_database, upgrade_database
from deepsift.daemon.repository import VerdictRepository

pytestmark = pytest.mark.integration

SHA = {"clip": "0c" * 32, "photo": "1f" * 32}
# job, sha, engine version, role, status, label, code
OLD_ROWS = (
    ("binary-fake", "clip", 1, "serving", "ok", "fake", None),
    ("multi-fake", "photo", 1, "serving", "ok", "synthetic", None),
    ("real", None, 1, "serving", "ok", "real", None),
    ("unsure", None, 1, "serving", "ok", "uncertain", None),
    ("broken", None, 1, "serving", "error", None, "corrupt_media"),
    ("reupload", "clip", 1, "serving", "ok", "fake", None),  # the clip again, under another job
    ("binary-fake", "clip", 2, "shadow", "error", None, "inference_failed"),  # v2 fails where v1 said fake
    ("multi-fake", "photo", 2, "shadow", "ok", "real", None),  # a shadow that disagrees
)


def _insert_old_rows(engine) -> dict[tuple[str, int], int]:
    """The rows as 0007 holds them, written in SQL (the repository writes head's columns)."""
    ids = {}
    with engine.begin() as connection:
        for job, content, version, role, status, label, code in OLD_ROWS:
            connection.execute(
                text(
                    "INSERT INTO verdicts (job_id, source, media_uri, media_sha256, status, label, code, engine_name, "
                    "engine_version, engine_artifact_sha256, timings_ms, job_metadata, role) VALUES (:job, 'kafka', "
                    "'file:///a', :sha, :status, :label, :code, 'sd2', :version, :art, '{}', '{}', :role)"
                ),
                {"job": job, "sha": SHA.get(content), "status": status, "label": label, "code": code,
                 "version": version, "art": "a" * 64, "role": role},
            )  # fmt: skip
            ids[job, version] = connection.execute(
                text("SELECT MAX(id) FROM verdicts WHERE job_id = :job"), {"job": job}
            ).scalar_one()
        connection.execute(
            text("INSERT INTO verdict_masks (verdict_id, frame_index, width, height, png) VALUES (:v, 0, 2, 2, :png)"),
            {"v": ids["multi-fake", 1], "png": b"\x00"},
        )
    return ids


def test_0008_backfills_the_decision_and_answers_per_content_and_per_version_pair(empty_database_url: str) -> None:
    # Given a database at 0007 holding verdicts of both engine versions, a re-upload and a stored mask
    upgrade_database(empty_database_url, "0007")
    engine = make_database(empty_database_url)
    try:
        ids = _insert_old_rows(engine)
        # When it is upgraded to head
        upgrade_database(empty_database_url)
        assert current_revision(empty_database_url) == "0008"
        with engine.connect() as connection:
            columns = "job_id, engine_version, is_fake, manipulation, masks_requested, submitted_at"
            rows = connection.execute(text(f"SELECT {columns} FROM verdicts")).all()
            backfilled = {(r[0], r[1]): (r[2], r[3], r[4], r[5]) for r in rows}
            # Then the decision and the class come from the label; masks are known asked for where stored
            assert backfilled["binary-fake", 1] == (True, None, None, None)
            assert backfilled["multi-fake", 1] == (True, "synthetic", True, None)
            assert [backfilled[j, 1][0] for j in ("real", "unsure", "broken")] == [False, None, None]
            # and the shadow that calls the multi-class fake real still makes it a disagreement
            queue = connection.execute(text("SELECT verdict_id, reason FROM review_queue")).all()
            assert (ids["multi-fake", 1], "disagreement") in [tuple(r) for r in queue]
            # and per content: the newest serving verdict, with how many jobs brought it
            content = connection.execute(
                text("SELECT media_sha256, id, jobs FROM latest_by_content ORDER BY media_sha256")
            ).all()
            assert [tuple(r) for r in content] == [
                (SHA["clip"], ids["reupload", 1], 2), (SHA["photo"], ids["multi-fake", 1], 1)
            ]  # fmt: skip
            # and per version pair: ok -> error on the clip once (not once per upload), fake -> real on the photo
            flips = connection.execute(
                text(
                    "SELECT media_sha256, from_version, to_version, from_outcome, to_outcome FROM verdict_flips "
                    "ORDER BY media_sha256"
                )
            ).all()
            assert [tuple(r) for r in flips] == [
                (SHA["clip"], 1, 2, "fake", "error"),
                (SHA["photo"], 1, 2, "fake", "real"),
            ]
        # and the repository reads the old rows with their backfilled class
        assert VerdictRepository(engine).get(ids["multi-fake", 1]).manipulation == "synthetic"
        # and the verdicts are append-only again
        with pytest.raises(IntegrityError, match="append-only"), engine.begin() as connection:
            connection.execute(text("UPDATE verdicts SET is_fake = NULL"))
    finally:
        engine.dispose()


def test_downgrading_0008_removes_the_facts_and_views_and_keeps_verdicts(empty_database_url: str) -> None:
    # Given a database at head with verdicts
    upgrade_database(empty_database_url)
    engine = make_database(empty_database_url)
    try:
        ids = _insert_old_rows(engine)
        engine.dispose()
        # When downgraded to 0007
        downgrade_database(empty_database_url, "0007")
        # Then the columns and the new views are gone, the verdicts stay, and the queue works as 0005 made it
        columns = {c["name"] for c in inspect(engine).get_columns("verdicts")}
        assert not columns & {"submitted_at", "min_track_fraction", "masks_requested", "is_fake", "manipulation"}
        assert set(inspect(engine).get_view_names()) == {"latest_verdicts", "review_queue"}
        with engine.connect() as connection:
            queue = connection.execute(text("SELECT verdict_id, reason FROM review_queue")).all()
        assert (ids["multi-fake", 1], "disagreement") in [tuple(r) for r in queue]
        # and upgrading again backfills them once more
        upgrade_database(empty_database_url)
        assert VerdictRepository(engine).get(ids["multi-fake", 1]).is_fake is True
    finally:
        engine.dispose()
