"""Shadow engines on real databases and a real Kafka-protocol broker: every job gets exactly one serving verdict
and exactly one shadow verdict per shadow engine, across a ``kill -9``; shadows are never announced and never in
``latest_verdicts``; ``daemon scan --shadow`` scores the same regions with both engines."""

from __future__ import annotations

import io
import json
import signal
import uuid
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import bindparam, text

from deepsift.daemon.cli import main as daemon_main
from deepsift.daemon.db import make_database, upgrade_database
from deepsift.engines.manifest import EngineManifest
from deepsift.engines.store import EngineStore

pytestmark = [pytest.mark.integration]

SHADOW = "tiny-shadow"


@pytest.fixture(scope="module")
def shadow_store(tmp_path_factory: pytest.TempPathFactory) -> EngineStore:
    """``tiny-full`` (serving) and ``tiny-shadow`` (same regions, another normalisation and other weights: the same
    frames are preprocessed once more for it)."""
    import torch

    from deepsift.engines.models import build_detector
    from deepsift.engines.recipes import load_recipe
    from deepsift.trainer.build import build_onnx_engine

    base = load_recipe("demo-tiny")
    store = EngineStore(tmp_path_factory.mktemp("shadow-engines"))
    for seed, name, mean in ((0, "tiny-full", base.input.mean), (1, SHADOW, (0.45, 0.45, 0.45))):
        recipe = load_recipe("demo-tiny", input={**base.input.model_dump(), "crop_mode": "full", "mean": mean})
        torch.manual_seed(seed)
        build_onnx_engine(build_detector(recipe), recipe, store, name, threshold=0.5)
    return store


def _rows(database_url: str, job_ids: list[str]) -> list[dict]:
    query = text(
        "SELECT job_id, role, engine_name, status, p_fake, frames_sampled FROM verdicts WHERE job_id IN :ids"
    ).bindparams(bindparam("ids", expanding=True))
    engine = make_database(database_url)
    try:
        with engine.connect() as c:
            return [dict(row) for row in c.execute(query, {"ids": job_ids}).mappings()]
    finally:
        engine.dispose()


def _latest_roles(database_url: str) -> Counter:
    engine = make_database(database_url)
    try:
        with engine.connect() as c:
            return Counter(c.execute(text("SELECT role FROM latest_verdicts")).scalars())
    finally:
        engine.dispose()


@pytest.mark.slow
def test_a_shadow_engine_adds_exactly_one_verdict_per_job_across_kill_9(
    postgres_url, stream_setup, start_daemon, shadow_store
):
    # Given a daemon with a shadow engine working through 24 video jobs (of one clip: re-uploads are not answered
    # from the first verdict here, which would leave them without shadow verdicts — nothing of them is decoded)
    stream = stream_setup(postgres_url, DEEPSIFT_ENGINE_STORE=str(shadow_store.root), DEEPSIFT_SHADOW_ENGINES=SHADOW,
                          DEEPSIFT_BATCH_MAX_FRAMES="64", DEEPSIFT_REUSE_VERDICTS="false")  # fmt: skip
    jobs = [stream.job("clip.mp4", i, frames=16) for i in range(24)]
    job_ids = [job_id for job_id, _ in jobs]
    first = start_daemon(stream.settings)
    first.wait_ready()
    stream.broker.produce(stream.topic, [value for _, value in jobs], partitions=stream.partitions)
    # When it is killed with SIGKILL after a few jobs, and a new daemon takes over
    stream.wait(lambda: len(_rows(postgres_url, job_ids)) >= 6, 120, "the first verdicts")
    first.stop(signal.SIGKILL)
    first.wait(timeout=30)
    at_kill = Counter(r["role"] for r in _rows(postgres_url, job_ids))
    assert at_kill["serving"] < 24, "the daemon finished before the kill; the test needs slower jobs"
    assert at_kill["serving"] == at_kill["shadow"], "a job's shadow verdict is stored with its serving verdict"
    second = start_daemon(stream.settings)
    stream.wait(lambda: len(_rows(postgres_url, job_ids)) >= 48, 180, "48 verdicts after the restart")
    # Then every job has exactly one serving and one shadow verdict, each by its own engine
    rows = _rows(postgres_url, job_ids)
    assert Counter((r["job_id"], r["role"]) for r in rows) == {(j, role): 1 for j in job_ids for role in
                                                                ("serving", "shadow")}  # fmt: skip
    assert {(r["role"], r["engine_name"]) for r in rows} == {("serving", "tiny-full"), ("shadow", SHADOW)}
    assert {r["status"] for r in rows} == {"ok"} and {r["frames_sampled"] for r in rows} == {16}
    by_job = {(r["job_id"], r["role"]): r["p_fake"] for r in rows}
    assert any(by_job[(j, "serving")] != by_job[(j, "shadow")] for j in job_ids), "the shadow is another engine"
    # and only serving verdicts are announced, and shown in latest_verdicts
    events = stream.broker.read(stream.verdict_topic, 60, timeout=10)
    announced = {json.loads(e.value)["job_id"] for e in events}
    assert announced == set(job_ids)
    assert all(json.loads(e.value)["engine"]["name"] == "tiny-full" for e in events)
    assert _latest_roles(postgres_url)["shadow"] == 0
    second.stop(signal.SIGTERM)
    assert second.wait(timeout=40) == 0


def test_scan_with_a_shadow_stores_its_verdicts_beside_the_serving_ones(
    database_url, shadow_store, stream_media: Path, tmp_path: Path
):
    # Given media and a store with a serving and a shadow engine of the same regions
    upgrade_database(database_url)
    files = [stream_media / "image_0.png", stream_media / "clip.mp4", stream_media / "corrupt.mp4"]
    argv = ["scan", *map(str, files), "--database-url", database_url, "--engine-store", str(shadow_store.root),
            "--engine", "tiny-full", "--shadow", SHADOW, "--frames", "4"]  # fmt: skip
    # When they are scanned with --shadow
    out = io.StringIO()
    assert daemon_main(argv, out) == 0
    # Then the table names the shadow, and each file has one serving and one shadow verdict, with the same status
    assert f"shadow {SHADOW} v1" in out.getvalue()
    uris = [f.resolve().as_uri() for f in files]
    engine = make_database(database_url)
    try:
        with engine.connect() as c:
            query = text(
                "SELECT media_uri, role, engine_name, status, code, frames_sampled FROM verdicts "
                "WHERE media_uri IN :uris ORDER BY id"
            ).bindparams(bindparam("uris", expanding=True))
            rows = [dict(r) for r in c.execute(query, {"uris": uris}).mappings()]
    finally:
        engine.dispose()
    newest = {(r["media_uri"], r["role"]): r for r in rows}  # a shared database may hold earlier scans of them
    for uri in uris:
        serving, shadow = newest[(uri, "serving")], newest[(uri, "shadow")]
        assert (serving["engine_name"], shadow["engine_name"]) == ("tiny-full", SHADOW)
        assert (serving["status"], serving["code"]) == (shadow["status"], shadow["code"])
        assert serving["frames_sampled"] == shadow["frames_sampled"]
    assert newest[(uris[2], "shadow")]["code"] in {"corrupt_media", "not_media"}


def test_a_shadow_that_cuts_other_regions_is_refused_at_start(database_url, demo_store, shadow_store, tmp_path):
    # Given a face-mode serving engine and a whole-frame shadow in one store
    store = EngineStore(tmp_path / "mixed")
    for source, name in ((demo_store, "demo"), (shadow_store, SHADOW)):
        manifest = EngineManifest.read(source.resolve(name))
        store.add(manifest, source.resolve(name) / manifest.artifact)
        store.promote(name, 1, reason="test")
    upgrade_database(database_url)
    # When a scan is started with it; Then it fails at once with the reason (exit 1), judging nothing
    argv = ["scan", str(tmp_path), "--database-url", database_url, "--engine-store", str(store.root),
            "--engine", "demo", "--shadow", SHADOW]  # fmt: skip
    assert daemon_main(argv) == 1


def test_a_shadow_verdict_never_costs_its_job_the_serving_one(db_engine) -> None:
    # Given a job judged by engine A with shadow S
    from dataclasses import replace

    from deepsift.daemon.records import EngineIdentity, VerdictRecord
    from deepsift.daemon.repository import VerdictRepository

    repository = VerdictRepository(db_engine)
    a, b, s = (EngineIdentity(name, 1, "ab" * 32) for name in ("shadow-test-a", "shadow-test-b", "shadow-test-s"))
    record = VerdictRecord(job_id=f"j-{uuid.uuid4().hex}", source="scan", media_uri="file:///x", status="ok",
                           engine=a, label="real", p_fake=0.25)  # fmt: skip
    repository.save(record, [replace(record, engine=s, role="shadow")])
    # When the job is judged again by B with the same shadow (a re-scan after a switch)
    second = repository.save(replace(record, engine=b), [replace(record, engine=s, role="shadow", p_fake=0.75)])
    # Then B's serving verdict is stored and S keeps its one, first verdict of the job
    assert second.created and repository.get(second.id).engine == b
    with db_engine.connect() as c:
        rows = c.execute(text("SELECT engine_name, role, p_fake FROM verdicts WHERE job_id = :j ORDER BY id"),
                         {"j": record.job_id}).all()  # fmt: skip
    assert [tuple(r) for r in rows] == [("shadow-test-a", "serving", 0.25), ("shadow-test-s", "shadow", 0.25),
                                        ("shadow-test-b", "serving", 0.25)]  # fmt: skip
