"""The SQL the operator docs show runs on a migrated PostgreSQL database holding verdicts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import text

from deepsift.daemon.records import EngineIdentity
from deepsift.daemon.repository import VerdictRepository

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOCS = (ROOT / "deploy" / "README.md", ROOT / "README.md")


def documented_queries() -> list[tuple[str, str]]:
    """(doc:first comment, statement) for every statement in the docs' ```sql blocks."""
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


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("query", [statement for _, statement in QUERIES], ids=[name for name, _ in QUERIES])
def test_documented_query_runs(query, db_engine, make_verdict, engine_manifest):
    # Given today's verdicts of two versions of the documented engine on the documented clip: fake, real, error
    repository = VerdictRepository(db_engine)
    clip = "file:///srv/uploads/clip.mp4"
    error = {"status": "error", "label": None, "p_fake": None, "code": "corrupt_media", "detail": "moov atom not found"}
    for version, overrides in ((1, {}), (2, {"label": "real", "p_fake": 0.125}), (2, error)):
        engine = EngineIdentity("siglip2-b16", version, "ab" * 32)
        manifest = engine_manifest(
            engine.name,
            version=version,
            artifact_sha256=engine.artifact_sha256,
            recipe="siglip2-binary-b16-256",
            evaluation={"val_roc_auc": 0.97},
        )
        repository.record_engine(manifest)
        repository.save(make_verdict(engine=engine, media_uri=clip, **overrides))
    # When the documented statement runs
    with db_engine.connect() as connection:
        rows = connection.execute(text(query)).fetchall()
    # Then PostgreSQL accepts it and finds them
    assert rows
