"""Upload-stream signals through the real pipeline on SQLite and PostgreSQL: an exact re-upload under a new name
is answered from the earlier verdict without a decode or an engine call (asserted at the decoder and judge
stage interfaces), a re-encoded and resized copy is linked as a near-duplicate, an unrelated file is not; media
signed with test Content Credentials (and tampered with after signing) gets its credentials' summary stored."""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from skimage import data
from sqlalchemy import text

from deepsift.daemon.db import make_database, upgrade_database
from deepsift.daemon.pipeline import JudgeConfig, PreparedMedia, verdict
from deepsift.daemon.repository import VerdictRepository
from deepsift.daemon.scan import run_scan
from deepsift.daemon.settings import Settings
from deepsift.engines.backends import load_engine
from deepsift.engines.decoders import PyAVDecoder
from deepsift.engines.media import write_video
from deepsift.engines.store import EngineStore
from tests.c2pa_assets import SIGNER_ORG, actions, make_chain, signer, tamper_scan

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class CountingDecoder(PyAVDecoder):
    """The PyAV decoder, recording what it was asked to decode (the decode stage's interface)."""

    def __init__(self) -> None:
        self.sources: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, source: Any, n_frames: int = 32, **kwargs: Any) -> Any:
        with self._lock:
            self.sources.append(Path(source).name if isinstance(source, Path) else "<bytes>")
        return super().__call__(source, n_frames, **kwargs)


class CountingJudge:
    """The judge stage, recording which jobs reached it with engine outputs (an engine call was made for them)."""

    def __init__(self) -> None:
        self.scored: list[str] = []
        self.reused: list[str] = []

    def __call__(self, prepared: PreparedMedia, scores: Any, manifest: Any, config: JudgeConfig) -> Any:
        name = prepared.job.uri.rsplit("/", 1)[1]
        if scores is not None:
            self.scored.append(name)
        if prepared.reused is not None:
            self.reused.append(name)
        return verdict(prepared, scores, manifest, config)


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("originals")
    Image.fromarray(data.astronaut()).save(folder / "astronaut.jpg", quality=92)
    photo = data.chelsea()
    frames = [np.ascontiguousarray(np.roll(photo, 6 * i, axis=1)[:288, :448]) for i in range(30)]
    write_video(folder / "cat.mp4", frames, fps=10.0)
    return folder


def _uploads(folder: Path, originals: Path) -> None:
    """The same photo under a new name, a smaller re-encode of it, a re-encode of the clip, an unrelated photo."""
    folder.mkdir()
    shutil.copy(originals / "astronaut.jpg", folder / "renamed_copy.jpg")
    with Image.open(originals / "astronaut.jpg") as image:
        image.resize((320, 320), Image.Resampling.BILINEAR).save(folder / "smaller_reencode.jpg", quality=55)
    photo = data.chelsea()
    frames = [np.ascontiguousarray(np.roll(photo, 6 * i, axis=1)[:288, :448][::2, ::2]) for i in range(30)]
    write_video(folder / "cat_reencoded.mp4", frames, fps=10.0, crf=35)
    Image.fromarray(data.coffee()).save(folder / "coffee.jpg", quality=90)


def _scan(
    folder: Path, store: EngineStore, repository: VerdictRepository, config: dict[str, Any] | None = None,
    **settings: Any,
) -> dict[str, Any]:  # fmt: skip
    decoder, judge = CountingDecoder(), CountingJudge()
    engine = load_engine(store.resolve("tiny-full"))
    judge_settings = {"frames_per_video": 8, "min_track_fraction": 0.1, **(config or {})}
    config_ = JudgeConfig(rule=Settings().aggregation_rule, decoder=decoder, max_media_bytes=1 << 30,
                          **judge_settings)  # fmt: skip
    results = list(run_scan([folder], engine, repository, config_, settings=Settings(**settings), judge=judge))
    return {
        "results": {r.path.name: r for r in results if r.path is not None},
        "decoded": decoder.sources,
        "scored": judge.scored,
        "reused": judge.reused,
    }


def test_reuploads_are_reused_and_near_duplicates_linked(
    empty_database_url: str, full_frame_store: EngineStore, originals: Path, tmp_path: Path
) -> None:
    upgrade_database(empty_database_url)  # a database of its own: no earlier verdict of these files
    engine = make_database(empty_database_url)
    repository = VerdictRepository(engine)
    try:
        first = _scan(originals, full_frame_store, repository)
        assert sorted(first["scored"]) == ["astronaut.jpg", "cat.mp4"]
        uploads = tmp_path / "uploads"
        _uploads(uploads, originals)
        second = _scan(uploads, full_frame_store, repository)
        # The renamed copy: no decode, no engine call; its own row names the earlier verdict and repeats it
        assert "renamed_copy.jpg" not in second["decoded"] and "renamed_copy.jpg" not in second["scored"]
        assert second["reused"] == ["renamed_copy.jpg"]
        original = first["results"]["astronaut.jpg"]
        copy = second["results"]["renamed_copy.jpg"]
        assert copy.verdict_id != original.verdict_id
        stored = repository.get(copy.verdict_id)
        assert stored.reused_from == original.verdict_id
        assert (stored.status, stored.label, stored.p_fake) == (original.verdict.status, original.verdict.label,
                                                                original.verdict.p_fake)  # fmt: skip
        assert stored.media_uri.endswith("/renamed_copy.jpg") and "decode" not in stored.timings_ms
        assert not stored.frames and not stored.hashes
        # The re-encodes were judged anew and linked to their originals; the unrelated photo to nothing
        assert sorted(second["scored"]) == ["cat_reencoded.mp4", "coffee.jpg", "smaller_reencode.jpg"]
        smaller = repository.get(second["results"]["smaller_reencode.jpg"].verdict_id)
        assert [link.earlier_verdict_id for link in smaller.near_duplicates] == [original.verdict_id]
        assert smaller.near_duplicates[0].distance <= 7 and smaller.near_duplicates[0].matching_frames == 1
        clip = repository.get(second["results"]["cat_reencoded.mp4"].verdict_id)
        assert [link.earlier_verdict_id for link in clip.near_duplicates] == [first["results"]["cat.mp4"].verdict_id]
        assert clip.near_duplicates[0].matching_frames >= clip.near_duplicates[0].frames_compared // 2
        assert len(clip.hashes) == 8
        assert not repository.get(second["results"]["coffee.jpg"].verdict_id).near_duplicates
        # And SQL answers "re-uploads and near-duplicates of this verdict" directly
        with engine.connect() as c:
            linked = c.execute(
                text(
                    "SELECT v.id FROM verdicts v LEFT JOIN verdict_near_duplicates n ON n.verdict_id = v.id "
                    "WHERE v.reused_from = :original OR n.earlier_verdict_id = :original ORDER BY v.id"
                ),
                {"original": original.verdict_id},
            ).scalars()
            assert list(linked) == sorted([copy.verdict_id, second["results"]["smaller_reencode.jpg"].verdict_id])
    finally:
        engine.dispose()


def test_reuse_can_be_turned_off_bounded_in_age_and_follows_the_settings(
    empty_database_url: str, full_frame_store: EngineStore, originals: Path, tmp_path: Path
) -> None:
    upgrade_database(empty_database_url)
    engine = make_database(empty_database_url)
    repository = VerdictRepository(engine)
    try:
        _scan(originals, full_frame_store, repository)
        cases = (
            ("off", {"reuse_verdicts": False}, None),
            ("aged", {"reuse_max_age_s": 0.5}, None),
            ("rejudged", {}, {"min_track_fraction": 0.3}),  # a setting the verdict depends on changed
        )
        for name, settings, config in cases:
            time.sleep(1.0)
            folder = tmp_path / name
            folder.mkdir()
            shutil.copy(originals / "astronaut.jpg", folder / f"copy_{name}.jpg")
            scanned = _scan(folder, full_frame_store, repository, config, **settings)
            assert scanned["scored"] == [f"copy_{name}.jpg"] and not scanned["reused"]
            stored = repository.get(scanned["results"][f"copy_{name}.jpg"].verdict_id)
            assert stored.reused_from is None
            assert stored.hashes and not stored.near_duplicates  # the same bytes are a copy, not a near-duplicate
    finally:
        engine.dispose()


def test_content_credentials_are_stored_and_a_tampered_manifest_is_a_state(
    empty_database_url: str, full_frame_store: EngineStore, tmp_path: Path
) -> None:
    # Given photos signed with test credentials: one declaring generative AI, one a camera capture, a copy of
    # the capture whose pixels changed after signing, and an unsigned photo
    folder, scratch = tmp_path / "signed", tmp_path / "scratch"
    folder.mkdir(), scratch.mkdir()
    Image.fromarray(data.astronaut()).save(scratch / "plain.jpg", quality=90)
    sign = signer(make_chain())
    sign(
        scratch / "plain.jpg",
        folder / "generated.jpg",
        "image/jpeg",
        actions(("c2pa.created", "trainedAlgorithmicMedia")),
    )
    sign(scratch / "plain.jpg", scratch / "camera.jpg", "image/jpeg", actions(("c2pa.created", "digitalCapture")))
    shutil.copy(scratch / "camera.jpg", folder / "camera.jpg")
    (folder / "tampered.jpg").write_bytes(tamper_scan((scratch / "camera.jpg").read_bytes()))
    Image.fromarray(data.coffee()).save(folder / "unsigned.jpg", quality=90)
    upgrade_database(empty_database_url)
    engine = make_database(empty_database_url)
    try:
        # When they are scanned
        scanned = _scan(folder, full_frame_store, VerdictRepository(engine))["results"]
        stored = {name: VerdictRepository(engine).get(r.verdict_id) for name, r in scanned.items()}
        # Then every one is judged (a bad manifest is a signal, not an error), with its credentials' summary
        assert {v.status for v in stored.values()} == {"ok"}
        generated = stored["generated.jpg"].content_credentials
        assert generated is not None and generated["state"] == "untrusted"  # the test root is on no trust list
        assert generated["ai_generated"] and generated["digital_source_types"] == ["trainedAlgorithmicMedia"]
        assert (generated["signer"], generated["claim_generator"]) == (SIGNER_ORG, "deepsift-tests/1.0")
        camera = stored["camera.jpg"].content_credentials
        assert camera is not None and not camera["ai_generated"] and camera["state"] == "untrusted"
        tampered = stored["tampered.jpg"].content_credentials
        assert tampered is not None and tampered["state"] == "invalid"
        assert "assertion.dataHash.mismatch" in tampered["errors"]
        assert stored["unsigned.jpg"].content_credentials is None
        # And the README's query finds uploads whose credentials declare AI generation, in this dialect's JSON
        declared = (
            "v.content_credentials->>'ai_generated' = 'true'"
            if engine.dialect.name == "postgresql"
            else "json_extract(v.content_credentials, '$.ai_generated') = 1"
        )
        with engine.connect() as c:
            rows = c.execute(text(f"SELECT v.media_uri FROM latest_verdicts v WHERE {declared}")).scalars().all()
        assert [uri.rsplit("/", 1)[1] for uri in rows] == ["generated.jpg"]
    finally:
        engine.dispose()


def test_daemon_run_answers_a_reupload_from_the_earlier_verdict(
    postgres_url: str, stream_setup: Any, start_daemon: Any
) -> None:
    # Given `daemon run` and a photo no test judged before
    stream = stream_setup(postgres_url, partitions=1)
    name = f"upload_{uuid.uuid4().hex[:12]}.png"
    pixels = np.random.default_rng(abs(hash(name)) % 2**32).integers(0, 255, (72, 96, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(stream.media / name)
    daemon = start_daemon(stream.settings)
    daemon.wait_ready()
    # When it is submitted, then submitted again under a new job id with its own metadata
    first_id, first = stream.job(name, 0, metadata={"post": 1})
    stream.broker.produce(stream.topic, [first])
    stream.wait(lambda: stream.verdicts([first_id]), 120, "the first verdict")
    second_id, second = stream.job(name, 1, metadata={"post": 2})
    stream.broker.produce(stream.topic, [second])
    stream.wait(lambda: stream.verdicts([second_id]), 120, "the re-upload's verdict")
    # Then the re-upload has its own row, naming the first, with its own metadata, counted in the metrics
    (earlier,), (reused,) = stream.verdicts([first_id]), stream.verdicts([second_id])
    engine = make_database(postgres_url)
    try:
        with engine.connect() as c:
            reused_from = c.execute(text("SELECT reused_from FROM verdicts WHERE id = :id"), {"id": reused["id"]})
            assert reused_from.scalar_one() == earlier["id"]
    finally:
        engine.dispose()
    assert reused["job_metadata"] == {"post": 2} and reused["status"] == earlier["status"]
    assert daemon.metric("deepsift_verdicts_reused_total") == 1
    events = {json.loads(r.value)["job_id"]: json.loads(r.value) for r in stream.broker.read(stream.verdict_topic, 2)}
    assert events[second_id]["reused_from"] == earlier["id"] and events[first_id]["reused_from"] is None
    daemon.stop()
    assert daemon.wait(timeout=40) == 0


def readme_queries(dialect: str) -> dict[str, str]:
    """The README's named SQL examples of the upload signals that run on ``dialect`` (``-- name: X (dialect)``)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Upload signals", 1)[1].split("```sql", 1)[1].split("```", 1)[0]
    queries = {}
    for block in section.split("-- name: ")[1:]:
        header, _, body = block.partition("\n")
        name, _, only = header.partition(" (")
        if not only or only.rstrip(")") == dialect:
            queries[name.strip()] = body.strip().rstrip(";")
    return queries


def test_the_readme_queries_answer_on_both_databases(empty_database_url: str, make_verdict: Any) -> None:
    from deepsift.daemon.records import NearDuplicateRecord

    upgrade_database(empty_database_url)
    engine = make_database(empty_database_url)
    repository = VerdictRepository(engine)
    try:
        fake = repository.save(make_verdict(label="fake", media_sha256="1" * 64)).id
        real = repository.save(make_verdict(label="real", media_sha256="2" * 64)).id
        exact = repository.save(make_verdict(label="fake", media_sha256="1" * 64, reused_from=fake)).id
        near = repository.save(make_verdict(label="fake", media_sha256="3" * 64,
                                            near_duplicates=(NearDuplicateRecord(fake, 4, 1, 1),))).id  # fmt: skip
        repository.save(make_verdict(label="real", media_sha256="4" * 64,
                                     near_duplicates=(NearDuplicateRecord(real, 2, 1, 1),)))  # fmt: skip
        declared = repository.save(make_verdict(
            label="real", media_sha256="5" * 64,
            content_credentials={"state": "untrusted", "ai_generated": True, "claim_generator": "gen/1"},
        )).id  # fmt: skip
        repository.save(make_verdict(label="real", content_credentials={"state": "valid", "ai_generated": False}))
        queries = readme_queries(engine.dialect.name)
        assert set(queries) == {"reuploads_of_fakes", "declared_ai_but_detector_real"}
        with engine.connect() as c:
            reuploads = c.execute(text(queries["reuploads_of_fakes"])).mappings().all()
            assert [(r["id"], r["earlier_id"], r["kind"]) for r in reuploads] == [(near, fake, "near"),
                                                                                 (exact, fake, "exact")]  # fmt: skip
            found = c.execute(text(queries["declared_ai_but_detector_real"])).mappings().all()
            assert [(r["id"], r["generator"]) for r in found] == [(declared, "gen/1")]
    finally:
        engine.dispose()
