"""The SQL the operator docs show runs on a migrated PostgreSQL database holding verdicts."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import text

from deepsift.daemon.records import EngineIdentity
from deepsift.daemon.repository import VerdictRepository
from deepsift.daemon.reviews import Reviews

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOCS = (ROOT / "deploy" / "README.md", ROOT / "README.md")


def documented_queries(dialect: str = "postgresql") -> list[tuple[str, str]]:
    """(doc:first comment, statement) for every statement in the docs' ```sql blocks that runs on ``dialect``:
    those unmarked, and those whose ``-- name: X (dialect)`` line names it."""
    queries = []
    for doc in DOCS:
        for block in re.findall(r"```sql\n(.*?)```", doc.read_text(), flags=re.DOTALL):
            for statement in filter(str.strip, block.split(";")):
                title = re.search(r"--\s*(.*)", statement)
                only = re.search(r"--\s*name:.*\((postgresql|sqlite)\)", statement)
                if only and only[1] != dialect:
                    continue
                queries.append((f"{doc.relative_to(ROOT)}: {title[1] if title else statement[:40]}", statement))
    return queries


QUERIES = documented_queries()
SQLITE_ONLY = [query for query in documented_queries("sqlite") if query not in QUERIES]


def test_the_docs_show_queries():
    assert len([name for name, _ in QUERIES if name.startswith("deploy/")]) >= 5


def _documented_verdicts(db_engine, make_verdict, engine_manifest) -> None:
    """Today's verdicts of two versions of the documented engine on the documented clip: fake, real (its Content
    Credentials declaring AI generation), error; and a re-upload of the fake."""
    repository = VerdictRepository(db_engine)
    clip = "file:///srv/uploads/clip.mp4"
    error = {"status": "error", "label": None, "p_fake": None, "code": "corrupt_media", "detail": "moov atom not found"}
    declared = {"state": "untrusted", "ai_generated": True, "claim_generator": "generator/1.0"}
    real = {"label": "real", "p_fake": 0.125, "content_credentials": declared}
    saved = []
    for version, overrides in ((1, {}), (2, real), (2, error)):
        engine = EngineIdentity("siglip2-b16", version, "ab" * 32)
        manifest = engine_manifest(
            engine.name,
            version=version,
            artifact_sha256=engine.artifact_sha256,
            recipe="siglip2-binary-b16-256",
            evaluation={"val_roc_auc": 0.97},
        )
        repository.record_engine(manifest)
        saved.append(repository.save(make_verdict(engine=engine, media_uri=clip, **overrides)).id)
    engine = EngineIdentity("siglip2-b16", 1, "ab" * 32)
    repository.save(make_verdict(engine=engine, media_uri="file:///srv/uploads/again.mp4", reused_from=saved[0]))
    # A fake a shadow engine calls real and a reviewer says is real; an uncertain verdict waiting for review
    fake = make_verdict(engine=engine, media_uri="file:///srv/uploads/reviewed.mp4")
    reviewed = repository.save(fake)
    shadow = EngineIdentity("siglip2-b16", 3, "ef" * 32)
    repository.save(replace(fake, engine=shadow, role="shadow", label="real", p_fake=0.25))
    Reviews(repository).add(reviewed.id, "real", "analyst")
    repository.save(make_verdict(engine=engine, media_uri="file:///srv/uploads/unsure.mp4", label="uncertain"))


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("query", [statement for _, statement in QUERIES], ids=[name for name, _ in QUERIES])
def test_documented_query_runs(query, db_engine, make_verdict, engine_manifest):
    # Given the documented verdicts
    _documented_verdicts(db_engine, make_verdict, engine_manifest)
    # When the documented statement runs
    with db_engine.connect() as connection:
        rows = connection.execute(text(query)).fetchall()
    # Then PostgreSQL accepts it and finds them
    assert rows


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("query", [q for _, q in SQLITE_ONLY], ids=[name for name, _ in SQLITE_ONLY])
def test_documented_sqlite_query_runs(query, db_engine, make_verdict, engine_manifest):
    # The statements the docs give in a SQLite form (JSON operators differ) run on SQLite and find the verdicts
    _documented_verdicts(db_engine, make_verdict, engine_manifest)
    with db_engine.connect() as connection:
        assert connection.execute(text(query)).fetchall()
