"""The SQL the docs show runs as written on migrated SQLite and PostgreSQL databases holding verdicts."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from deepsift.daemon.records import EngineIdentity
from deepsift.daemon.repository import VerdictRepository
from deepsift.daemon.reviews import Reviews

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOCS = (ROOT / "deploy" / "README.md", ROOT / "README.md")
CLIP_SHA = "c1" * 32  # the documented clip, judged by both versions and uploaded twice


def documented_queries() -> list[tuple[str, str]]:
    """(doc: first comment, statement) for every statement in the docs' ```sql blocks; each must run on both
    databases as written."""
    queries = []
    for doc in DOCS:
        for block in re.findall(r"```sql\n(.*?)```", doc.read_text(), flags=re.DOTALL):
            for statement in filter(str.strip, block.split(";")):
                title = re.search(r"--\s*(.*)", statement)
                queries.append((f"{doc.relative_to(ROOT)}: {title[1] if title else statement[:40]}", statement))
    return queries


QUERIES = documented_queries()


def test_the_docs_show_queries():
    assert len([name for name, _ in QUERIES if name.startswith("deploy/")]) >= 5
    assert len([name for name, _ in QUERIES if name.startswith("README")]) >= 12


def test_no_documented_query_is_for_one_database_only():
    assert [name for name, query in QUERIES if re.search(r"--\s*name:.*\((postgresql|sqlite)\)", query)] == []


def _documented_verdicts(db_engine, make_verdict, engine_manifest) -> None:
    """Today's verdicts of two versions of the documented engine on the documented clip: fake, real (its Content
    Credentials declaring AI generation), error (an ok -> error flip); a re-upload of the clip; a reviewed fake a
    shadow calls real; an uncertain verdict; a multi-class fake; and the engine's promotion."""
    repository = VerdictRepository(db_engine)
    clip = "file:///srv/uploads/clip.mp4"
    submitted = {"submitted_at": datetime.now(UTC) - timedelta(seconds=3), "decisive_track_id": 7,
                 "timings_ms": {"decode": 12.5, "infer": 3.25, "queue_wait": 2500.0, "total": 2990.5}}  # fmt: skip
    error = {"status": "error", "label": None, "p_fake": None, "code": "corrupt_media", "detail": "moov atom not found"}
    declared = {"state": "untrusted", "ai_generated": True, "claim_generator": "generator/1.0"}
    real = {"label": "real", "p_fake": 0.125, "content_credentials": declared}
    saved = []
    for version, overrides in ((1, {}), (2, real), (2, error)):
        engine = EngineIdentity("siglip2-b16", version, "ab" * 32)
        manifest = engine_manifest(engine.name, version=version, artifact_sha256=engine.artifact_sha256,
                                   recipe="siglip2-binary-b16-256", evaluation={"val_roc_auc": 0.97})  # fmt: skip
        repository.record_engine(manifest)
        verdict = make_verdict(engine=engine, media_uri=clip, media_sha256=CLIP_SHA, **{**submitted, **overrides})
        saved.append(repository.save(verdict).id)
    engine = EngineIdentity("siglip2-b16", 1, "ab" * 32)
    repository.save(make_verdict(engine=engine, media_uri="file:///srv/uploads/again.mp4", media_sha256=CLIP_SHA,
                                 reused_from=saved[0], **submitted))  # fmt: skip
    # A fake a shadow engine calls real and a reviewer says is real; an uncertain verdict waiting for review
    fake = make_verdict(engine=engine, media_uri="file:///srv/uploads/reviewed.mp4", media_sha256="c2" * 32)
    reviewed = repository.save(fake)
    shadow = EngineIdentity("siglip2-b16", 3, "ef" * 32)
    repository.save(replace(fake, engine=shadow, role="shadow", label="real", p_fake=0.25))
    Reviews(repository).add(reviewed.id, "real", "analyst")
    repository.save(make_verdict(engine=engine, media_uri="file:///srv/uploads/unsure.mp4", label="uncertain"))
    # A multi-class engine's fake: its label is its class
    multi = EngineIdentity("sd2-clip-l14", 1, "cd" * 32)
    repository.save(make_verdict(engine=multi, media_uri="file:///srv/uploads/face.mp4", label="synthetic",
                                 manipulation="synthetic", **submitted))  # fmt: skip
    _documented_promotion(db_engine)


def _documented_promotion(db_engine) -> None:
    """The documented engine's promotion to version 2, before the documented time (once per database)."""
    with db_engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO engine_promotions (engine_name, kind, version, occurred_at, history_key) "
                "SELECT 'siglip2-b16', 'promote', 2, :at, 'documented' WHERE NOT EXISTS "
                "(SELECT 1 FROM engine_promotions WHERE engine_name = 'siglip2-b16' AND history_key = 'documented')"
            ),
            {"at": datetime(2026, 11, 30, 8, 0, tzinfo=UTC)},
        )


@pytest.mark.parametrize("query", [statement for _, statement in QUERIES], ids=[name for name, _ in QUERIES])
def test_documented_query_runs_on_both_databases(query, db_engine, make_verdict, engine_manifest):
    # Given the documented verdicts, on SQLite and on PostgreSQL
    _documented_verdicts(db_engine, make_verdict, engine_manifest)
    # When the documented statement runs as written
    with db_engine.connect() as connection:
        rows = connection.execute(text(query)).fetchall()
    # Then the database accepts it and finds them
    assert rows
