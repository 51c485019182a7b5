"""Reviews in SQL on SQLite and PostgreSQL: appended by ``daemon review add``, append-only, the newest of a job
overriding its label in ``latest_verdicts`` (history kept), and the three parts of ``review_queue``."""

from __future__ import annotations

import io
import json
import uuid
from dataclasses import replace

import pytest
from sqlalchemy import text

from deepsift.daemon.cli import main as daemon_main
from deepsift.daemon.records import EngineIdentity, VerdictRecord
from deepsift.daemon.repository import VerdictRepository
from deepsift.daemon.reviews import ReviewRefused, Reviews

pytestmark = pytest.mark.integration

SERVING = EngineIdentity("review-demo", 1, "ab" * 32)
SHADOW = EngineIdentity("review-demo", 2, "cd" * 32)


def _sha(first_digit: str) -> str:
    return first_digit + uuid.uuid4().hex + uuid.uuid4().hex[:31]


def _verdict(label: str, sha: str | None = None, engine: EngineIdentity = SERVING, **fields: object) -> VerdictRecord:
    return VerdictRecord(job_id=f"job-{uuid.uuid4().hex}", source="kafka", media_uri="file:///m/a.png", status="ok",
                         engine=engine, label=label, p_fake=0.5, threshold=0.5, media_sha256=sha or _sha("a"),
                         **fields)  # fmt: skip


def _latest(db_engine, job_id: str) -> dict:
    with db_engine.connect() as c:
        query = text(
            "SELECT id, label, final_label, reviewed_label, reviewer, role FROM latest_verdicts WHERE job_id = :j"
        )
        return dict(c.execute(query, {"j": job_id}).mappings().one())


def _queue(db_engine, job_ids: set[str]) -> list[tuple[str, str]]:
    """(job, reason) of the queue's rows for these jobs, each row as often as the view lists it."""
    with db_engine.connect() as c:
        rows = c.execute(text("SELECT job_id, reason FROM review_queue")).all()
    return sorted((job_id, reason) for job_id, reason in rows if job_id in job_ids)


def test_the_newest_review_overrides_the_label_and_every_review_stays(db_engine, database_url) -> None:
    # Given a stored fake verdict
    repository = VerdictRepository(db_engine)
    record = _verdict("fake")
    saved = repository.save(record)
    assert _latest(db_engine, record.job_id)["final_label"] == "fake"
    # When two reviewers disagree in turn, through the command line
    for label, reviewer in (("real", "ann"), ("fake", "bob")):
        out = io.StringIO()
        argv = [
            "review",
            "add",
            str(saved.id),
            "--label",
            label,
            "--reviewer",
            reviewer,
            "--database-url",
            database_url,
        ]
        assert daemon_main(argv, out) == 0, out.getvalue()
        assert f"verdict {saved.id}" in out.getvalue()
    # Then the newest review decides the final label, the engine's label is kept, and both reviews remain
    latest = _latest(db_engine, record.job_id)
    assert (latest["label"], latest["final_label"], latest["reviewer"]) == ("fake", "fake", "bob")
    reviews = Reviews(repository).for_job(record.job_id)
    assert [(r.label, r.reviewer) for r in reviews] == [("real", "ann"), ("fake", "bob")]
    # And a review of the job by its id goes to its newest serving verdict
    out = io.StringIO()
    argv = ["review", "add", "--job-id", record.job_id, "--label", "real", "--note", "re-checked", "--reviewer", "cy",
            "--database-url", database_url]  # fmt: skip
    assert daemon_main(argv, out) == 0
    assert _latest(db_engine, record.job_id)["final_label"] == "real"


def test_reviews_are_append_only(db_engine) -> None:
    repository = VerdictRepository(db_engine)
    saved = repository.save(_verdict("real"))
    Reviews(repository).add(saved.id, "fake", "ann")
    for statement in ("UPDATE reviews SET label = 'real'", "DELETE FROM reviews"):
        with pytest.raises(Exception, match="append-only"), db_engine.begin() as c:
            c.execute(text(statement))


def test_a_review_that_does_not_fit_its_verdict_is_refused(db_engine, database_url, engine_manifest) -> None:
    # Given a multi-class engine's verdict (the engine recorded in SQL, as a daemon does)
    from deepsift.engines.recipes import TaskSpec

    repository = VerdictRepository(db_engine)
    task = TaskSpec(kind="multiclass", class_names=("real", "synthetic", "tampered"))
    manifest = engine_manifest("review-multi", version=3, task=task, artifact_sha256="ee" * 32)
    repository.record_engine(manifest)
    saved = repository.save(_verdict("tampered", engine=EngineIdentity("review-multi", 3, "ee" * 32)))
    reviews = Reviews(repository)
    # When reviews name a manipulation the engine does not know, or give a real media one, or name no verdict
    with pytest.raises(ReviewRefused, match="names its manipulation: one of synthetic, tampered, not 'faceswap'"):
        reviews.add(saved.id, "fake", "ann", manipulation="faceswap")
    with pytest.raises(ReviewRefused, match="names its manipulation"):
        reviews.add(saved.id, "fake", "ann")
    with pytest.raises(ReviewRefused, match="only a fake"):
        reviews.add(saved.id, "real", "ann", manipulation="synthetic")
    with pytest.raises(ReviewRefused, match="no verdict"):
        reviews.add(10**9, "fake", "ann")
    out = io.StringIO()
    assert daemon_main(["review", "add", "--job-id", "no-such-job", "--label", "fake", "--database-url",
                        database_url], out) == 3  # fmt: skip
    # And a binary engine's verdict takes no manipulation
    repository.record_engine(engine_manifest("review-binary", version=1, artifact_sha256="ee" * 32))
    binary = repository.save(_verdict("fake", engine=EngineIdentity("review-binary", 1, "ee" * 32)))
    with pytest.raises(ReviewRefused, match="binary"):
        reviews.add(binary.id, "fake", "ann", manipulation="synthetic")
    # Then a fitting one is recorded, and the final label is its manipulation class
    reviews.add(saved.id, "fake", "ann", manipulation="synthetic")
    job_id = repository.get(saved.id).job_id
    assert _latest(db_engine, job_id)["final_label"] == "synthetic"


def test_the_queue_holds_uncertain_disagreements_and_a_sample_of_confident_verdicts(db_engine, database_url) -> None:
    repository = VerdictRepository(db_engine)
    # Given: an uncertain verdict; a confident one a shadow contradicts; one a shadow agrees with; one the shadow
    # calls uncertain (no definite disagreement); a confident one in the sample (sha256 starting with 0), one
    # outside it; and an uncertain one already reviewed
    uncertain = _verdict("uncertain")
    contradicted, agreed, shadow_unsure = _verdict("real"), _verdict("fake"), _verdict("real")
    sampled, unsampled, reviewed = _verdict("real", _sha("0")), _verdict("fake", _sha("f")), _verdict("uncertain")
    for record in (uncertain, contradicted, agreed, shadow_unsure, sampled, unsampled, reviewed):
        repository.save(record)
    for record, shadow_label in ((contradicted, "fake"), (agreed, "synthetic"), (shadow_unsure, "uncertain")):
        repository.save(replace(record, engine=SHADOW, label=shadow_label, role="shadow"))
    Reviews(repository).add(repository.find_id(reviewed.job_id, SERVING), "real", "ann")
    ours = {r.job_id for r in (uncertain, contradicted, agreed, shadow_unsure, sampled, unsampled, reviewed)}
    # Then the queue names each verdict worth a look once, with its reason
    assert _queue(db_engine, ours) == sorted(
        [(uncertain.job_id, "uncertain"), (contradicted.job_id, "disagreement"), (sampled.job_id, "sample")]
    )
    # And shadow verdicts never show in latest_verdicts
    assert _latest(db_engine, contradicted.job_id)["role"] == "serving"
    # And `daemon review queue` prints them, filtered by reason
    out = io.StringIO()
    argv = [
        "review",
        "queue",
        "--json",
        "--limit",
        "100000",
        "--reason",
        "disagreement",
        "--database-url",
        database_url,
    ]
    assert daemon_main(argv, out) == 0
    listed = [json.loads(line) for line in out.getvalue().splitlines()]
    assert contradicted.job_id in {item["job_id"] for item in listed}
    assert {item["reason"] for item in listed} == {"disagreement"}
    # and without a reason, the uncertain ones come first, then disagreements, then the sample
    out = io.StringIO()
    assert daemon_main(["review", "queue", "--json", "--limit", "100000", "--database-url", database_url], out) == 0
    reasons = [json.loads(line)["reason"] for line in out.getvalue().splitlines()]
    assert reasons == sorted(reasons, key=["uncertain", "disagreement", "sample"].index) and len(set(reasons)) == 3


def test_hostile_text_in_a_review_is_stored_as_both_databases_can(db_engine) -> None:
    repository = VerdictRepository(db_engine)
    saved = repository.save(_verdict("fake"))
    review = Reviews(repository).add(saved.id, "fake", "a\x00b\ud800", manipulation="m\x00", note="n\x00\ud800")
    assert (review.reviewer, review.manipulation, review.note) == ("a\ufffdb\ufffd", "m\ufffd", "n\ufffd\ufffd")
