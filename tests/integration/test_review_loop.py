"""The review loop against real SQLite and PostgreSQL: reviewed verdicts → ``trainer export-reviews`` → manifest
(splits grouped by content, unusable media skipped with reasons) → ``trainer prepare`` → ``trainer fit`` and
``trainer fewshot`` → ``trainer rebuild-engine --reviewed``; ``trainer engines compare`` of a serving and a shadow
version with known flips; ``trainer engines promote --require-*`` refusing and allowing."""

from __future__ import annotations

import json
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import Engine

from deepsift.daemon.db import make_database, upgrade_database
from deepsift.daemon.records import EngineIdentity, VerdictRecord
from deepsift.daemon.repository import VerdictRepository
from deepsift.daemon.reviews import Reviews
from deepsift.engines.manifest import sha256_file
from deepsift.engines.store import EngineStore
from deepsift.trainer.cli import main
from deepsift.trainer.data import read_manifest
from deepsift.trainer.reviewed import split_of

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Store:
    """A verdict store to write verdicts and reviews into."""

    url: str
    repository: VerdictRepository
    reviews: Reviews

    def judge(self, job_id: str, uri: str, sha: str | None, engine: EngineIdentity, **fields: object) -> int:
        """Store a serving verdict (and any ``shadows``); its id."""
        shadows = fields.pop("shadows", ())
        record = VerdictRecord(job_id=job_id, source="scan", media_uri=uri, engine=engine, media_sha256=sha,
                               **{"status": "ok", "threshold": 0.5, **fields})  # type: ignore[arg-type]  # fmt: skip
        return self.repository.save(record, shadows=shadows).id  # type: ignore[arg-type]


def _store(engine: Engine, url: str) -> Store:
    repository = VerdictRepository(engine)
    return Store(url, repository, Reviews(repository))


@pytest.fixture
def private_store(empty_database_url: str) -> Iterator[Store]:
    """A database of its own (export reads every review in it), migrated by the real migrations."""
    upgrade_database(empty_database_url)
    engine = make_database(empty_database_url)
    yield _store(engine, empty_database_url)
    engine.dispose()


@pytest.fixture
def shared_store(db_engine: Engine, database_url: str) -> Store:
    return _store(db_engine, database_url)


SERVING = EngineIdentity("demo", 1, "ab" * 32)


# --- media ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Media:
    path: Path
    label: str  # the truth a reviewer gives
    media_type: str

    @property
    def sha256(self) -> str:
        return sha256_file(self.path)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> list[Media]:
    """Photos and short clips of a real face (skimage's astronaut in varied scenes); fakes carry a plain colour-wheel
    paste on the face, so a few training steps tell them apart."""
    from deepsift.engines.media import write_video
    from deepsift.trainer.demo import scene_factory
    from deepsift.trainer.synthetic import Forgery

    folder = tmp_path_factory.mktemp("reviewed-media")
    factory, rng, found = scene_factory(), np.random.default_rng(5), []
    for label in ("real", "fake"):
        for i in range(7):
            paste = Forgery(0.5, 0.72, 0.22, 5, (rng.uniform(0.1, 0.6), rng.uniform(0.1, 0.6)), 1.0)
            photo = factory.forged_photo(paste if label == "fake" else None)
            start, end, background = factory.random_view(rng), factory.random_view(rng), int(rng.integers(100))
            if i == 0:  # one clip per label
                frames = (factory.render(photo, start.toward(end, t / 9), background)[0] for t in range(10))
                write_video(path := folder / f"{label}_clip.mp4", frames, fps=10.0)
                found.append(Media(path, label, "video"))
            else:
                Image.fromarray(factory.render(photo, start, background)[0]).save(path := folder / f"{label}_{i}.jpg")
                found.append(Media(path, label, "image"))
    return found


def _judge_and_review(store: Store, items: list[Media], engine: EngineIdentity = SERVING) -> dict[str, int]:
    """One scanned job per media, judged by ``engine`` and reviewed with the media's truth; verdict ids by name."""
    ids = {}
    for m in items:
        ids[m.path.name] = store.judge(f"job-{uuid.uuid4().hex}", m.path.as_uri(), m.sha256, engine,
                                       media_type=m.media_type, label="real", p_fake=0.2)  # fmt: skip
        store.reviews.add(ids[m.path.name], m.label, "alice")
    return ids


def export(store: Store, out: Path, *extra: str) -> int:
    return main(["export-reviews", "--db", store.url, "--out", str(out), *extra])


# --- export --------------------------------------------------------------------------------------------------


def test_export_writes_one_row_per_intact_content_with_its_newest_review(
    private_store: Store, media: list[Media], tmp_path: Path, capsys
) -> None:
    store = private_store
    # Given four reviewed images, each reviewed once, with their truth
    real, fake = [m for m in media if m.label == "real"][1:3], [m for m in media if m.label == "fake"][1:3]
    ids = _judge_and_review(store, [*real, *fake])
    # and a re-review: the newest review of real[1]'s job says fake (a tampered one), so that is its truth
    store.reviews.add(ids[real[1].path.name], "fake", "bob", manipulation="tampered")
    # and a re-upload of fake[0] (same bytes, another path and job) reviewed real later: the newest review wins
    copy = tmp_path / "reupload" / "copy.jpg"
    copy.parent.mkdir()
    shutil.copyfile(fake[0].path, copy)
    reupload = store.judge("job-reupload", copy.as_uri(), fake[0].sha256, SERVING, label="fake", p_fake=0.9)
    store.reviews.add(reupload, "real", "carol")
    # and a re-upload of fake[1] whose newer copy is gone since: the old copy still serves the newest review
    gone = tmp_path / "gone.jpg"
    shutil.copyfile(fake[1].path, gone)
    store.reviews.add(store.judge("job-gone-copy", str(gone), fake[1].sha256, SERVING, label="fake"), "fake", "dan")
    gone.unlink()
    # and reviewed media that cannot be used: downloaded, deleted, changed, never read, not a local file
    changed = tmp_path / "changed.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(changed)
    missing = tmp_path / "missing.jpg"
    unusable = {
        "job-http": ("https://media.example.com/u/42.jpg", "ab" * 32, "remote_media"),
        "job-missing": (missing.as_uri(), "cd" * 32, "missing"),
        "job-changed": (changed.as_uri(), sha256_file(changed), "changed"),
        "job-unread": ((tmp_path / "bad.bin").as_uri(), None, "no_sha256"),
        "job-s3": ("s3://bucket/key.jpg", "ef" * 32, "not_local"),
    }
    for job, (uri, sha, _) in unusable.items():
        status = {"status": "error", "code": "not_media"} if sha is None else {"label": "fake", "p_fake": 0.7}
        store.reviews.add(store.judge(job, uri, sha, SERVING, **status), "fake", "erin")
    changed.write_bytes(b"edited since")

    # When the reviews are exported
    out = tmp_path / "export" / "reviewed.jsonl"
    assert export(store, out, "--seed", "3") == 0
    printed = capsys.readouterr().out

    # Then one row per intact content: labels from each content's newest review, paths of intact copies
    rows = {Path(r.path).name: r for r in read_manifest(out)}
    assert {name: (r.label, r.manipulation) for name, r in rows.items()} == {
        real[0].path.name: ("real", ""), real[1].path.name: ("fake", "tampered"),
        "copy.jpg": ("real", ""), fake[1].path.name: ("fake", ""),
    }  # fmt: skip
    # and every row's video id is its content hash, and its split the seeded hash of it
    for name, row in rows.items():
        sha = sha256_file(Path(row.path))
        assert row.video_id == sha and row.split == split_of(sha, 3, 0.15, 0.15), name
    # and each unusable item is reported with its reason, the rest counted
    provenance = json.loads(out.with_name("reviewed.provenance.json").read_text())
    assert {s["job_id"]: s["reason"] for s in provenance["skipped"]} == {j: u[2] for j, u in unusable.items()}
    assert provenance["superseded_reviews"] == 2 and provenance["conflicting_contents"] == 1
    assert "5 skipped: 1 changed, 1 missing, 1 no_sha256, 1 not_local, 1 remote_media" in printed
    assert "job-http" in printed and "http(s) media is not downloaded" in printed


def test_a_media_keeps_its_split_when_more_reviews_arrive(private_store: Store, media: list[Media], tmp_path: Path):
    # Given an export of half the reviewed media
    _judge_and_review(private_store, media[::2])
    assert export(private_store, tmp_path / "first.csv") == 0
    first = {r.path: r.split for r in read_manifest(tmp_path / "first.csv")}

    # When the rest is reviewed and the export runs again
    _judge_and_review(private_store, media[1::2])
    assert export(private_store, tmp_path / "second.csv") == 0
    second = {r.path: r.split for r in read_manifest(tmp_path / "second.csv")}

    # Then every media exported before is in the same split, and the new ones were added
    assert len(second) == len(media) and {p: second[p] for p in first} == first
    # and another seed deals the same media differently
    assert export(private_store, tmp_path / "other.csv", "--seed", "1") == 0
    assert {r.path: r.split for r in read_manifest(tmp_path / "other.csv")} != second


def test_an_export_of_a_store_without_reviews_fails_with_a_reason(private_store: Store, tmp_path: Path, capsys):
    assert export(private_store, tmp_path / "none.jsonl") == 1
    assert "no reviewed media to export: 0 reviewed jobs" in capsys.readouterr().err
    assert main(["export-reviews", "--db", f"sqlite:///{tmp_path}/absent.db", "--out", str(tmp_path / "x.csv")]) == 1
    assert "no verdict store at" in capsys.readouterr().err


# --- the loop: export → prepare → fit / fewshot → rebuild-engine --reviewed ---------------------------------------


def _seed_with_both_labels_everywhere(items: list[Media], val: float, test: float) -> int:
    """A split seed that deals real and fake media to val and test, and two of each to train (the few-shot
    support): a set this small needs one chosen."""
    hashes = [(m.sha256, m.label) for m in items]
    for seed in range(1000):
        dealt = Counter((split_of(sha, seed, val, test), label) for sha, label in hashes)
        if (
            min(dealt[s, lab] for s in ("val", "test") for lab in ("real", "fake")) >= 1
            and min(dealt["train", "real"], dealt["train", "fake"]) >= 2
        ):
            return seed
    raise AssertionError("no seed deals both labels to every split")


@pytest.mark.slow
def test_reviewed_media_train_a_detector_and_gate_its_rebuild(private_store: Store, media: list[Media], tmp_path):
    # Given every media judged and reviewed, and a seed that gives each split both labels
    _judge_and_review(private_store, media)
    seed = _seed_with_both_labels_everywhere(media, 0.25, 0.25)

    # When the reviews are exported and the media cut into crops as the daemon cuts them
    manifest = tmp_path / "reviewed" / "media.jsonl"
    assert (
        export(private_store, manifest, "--seed", str(seed), "--val-fraction", "0.25", "--test-fraction", "0.25") == 0
    )
    crops = tmp_path / "crops"
    assert (
        main(["prepare", "--data", str(manifest), "--recipe", "demo-tiny", "--out", str(crops), "--frames", "3"]) == 0
    )

    # Then every crop of one media is in that media's split, and carries its label
    exported = {r.video_id: r for r in read_manifest(manifest)}
    prepared = read_manifest(crops / "manifest.jsonl")
    assert {r.video_id for r in prepared} == set(exported)  # every media gave crops
    assert all((r.split, r.label) == (exported[r.video_id].split, exported[r.video_id].label) for r in prepared)
    clips = [m.sha256 for m in media if m.media_type == "video"]
    assert all(sum(r.video_id == sha for r in prepared) == 3 for sha in clips)  # 3 frames of each clip

    # And the crops train a detector, adapt a few-shot one, and gate the rebuilt engine on the reviewed test split
    data = str(crops / "manifest.jsonl")
    fit = ["fit", "--recipe", "demo-tiny", "--data", data, "--out", str(tmp_path / "runs" / "r1"), "--max-steps", "40",
           "--workers", "0", "--no-progress", "--eval-every", "20"]  # fmt: skip
    assert main(fit) == 0
    fewshot = ["fewshot", "--recipe", "tiny-fewshot", "--data", data, "--out", str(tmp_path / "fs"), "--shots", "2",
               "--encoder-checkpoint", str(tmp_path / "runs" / "r1" / "best.pt")]  # fmt: skip
    assert main(fewshot) == 0
    engines = EngineStore(tmp_path / "engines")
    rebuild = ["--engine-store", str(engines.root), "rebuild-engine", "demo-tiny", "--name", "reviewed-det",
               "--run", str(tmp_path / "runs" / "r1"), "--reviewed", data, "--reviewed-split", "test",
               "--target-fpr", "0.5"]  # fmt: skip
    assert main(rebuild) == 0 and engines.current_version("reviewed-det") == 1
    evaluation = json.loads((engines.resolve("reviewed-det") / "manifest.json").read_text())["evaluation"]
    assert evaluation["reviewed_split"] == "test" and evaluation["reviewed_n"] == sum(
        r.split == "test" for r in prepared
    )


# --- compare and promote -------------------------------------------------------------------------------------

# job: (A verdict, B verdict, reviews oldest first); a verdict is (status, label, p_fake) or None (not judged)
JOBS = {
    "j1": (("ok", "real", 0.1), ("ok", "real", 0.2), ["real"]),
    "j2": (("ok", "fake", 0.9), ("ok", "fake", 0.8), ["fake"]),
    "j3": (("ok", "real", 0.3), ("ok", "fake", 0.7), ["fake"]),  # A misses a fake
    "j4": (("ok", "fake", 0.6), ("ok", "real", 0.4), ["fake", "real"]),  # A flags a real; newest review: real
    "j5": (("ok", "uncertain", 0.5), ("ok", "fake", 0.9), ["fake"]),  # uncertain decides nothing
    "j6": (("ok", "real", 0.2), ("abstained", None, None), []),  # a status flip
    "j7": (("error", None, None), ("error", None, None), []),
    "j8": (("ok", "fake", 0.95), ("ok", "fake", 0.99), []),
    "j9": (("ok", "real", 0.1), None, ["real"]),  # B never judged it: not paired
    "j10": (("ok", "real", 0.05), ("ok", "synthetic", 0.7), []),  # a manipulation class is a fake decision
}
CODES = {"abstained": "no_face", "error": "corrupt_media"}


def _verdict_fields(status: str, label: str | None, p_fake: float | None) -> dict[str, object]:
    return {"status": status, "label": label, "p_fake": p_fake, "code": CODES.get(status)}


@pytest.fixture
def two_versions(shared_store: Store) -> tuple[Store, str]:
    """Engine versions 1 (serving) and 2 (shadow) of a fresh engine name, judged and reviewed as in JOBS."""
    name = f"det-{uuid.uuid4().hex[:8]}"
    for job, (a, b, labels) in JOBS.items():
        job_id = f"{name}-{job}"
        shadows = ()
        if b is not None:
            shadows = (VerdictRecord(job_id=job_id, source="kafka", media_uri="file:///m.jpg", role="shadow",
                                     engine=EngineIdentity(name, 2, "22" * 32), threshold=0.5,
                                     **_verdict_fields(*b)),)  # type: ignore[arg-type]  # fmt: skip
        verdict_id = shared_store.judge(job_id, "file:///m.jpg", "cd" * 32, EngineIdentity(name, 1, "11" * 32),
                                        shadows=shadows, **_verdict_fields(*a))  # fmt: skip
        for label in labels:
            shared_store.reviews.add(verdict_id, label, "alice")
    return shared_store, name


def test_compare_counts_agreement_flips_shift_and_reviewed_errors(two_versions: tuple[Store, str], capsys) -> None:
    store, name = two_versions
    # When versions 1 and 2 are compared as JSON
    assert main(["engines", "compare", name, "1", "2", "--db", store.url, "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)

    # Then jobs judged by both are paired, and decided jobs (ok, not uncertain) agree on 3 of 6
    assert figures["jobs_paired"] == 9 and figures["both_ok"] == 7
    assert (figures["decided_by_both"], figures["agreeing"], figures["agreement"]) == (6, 3, 0.5)
    assert figures["status_flips"] == {"ok->abstained": 1} and figures["uncertain"] == {"a": 1, "b": 0}
    assert figures["flips"] == {
        "real": {"real": 1, "fake": 1, "synthetic": 1, "abstained": 1},
        "fake": {"real": 1, "fake": 2},
        "uncertain": {"fake": 1},
        "error": {"error": 1},
    }
    # and P(fake) moved up on the 7 jobs both scored
    shift = figures["p_fake"]
    assert shift["n"] == 7 and shift["mean_a"] == pytest.approx(3.4 / 7) and shift["mean_b"] == pytest.approx(0.67)
    assert (shift["median_a"], shift["median_b"]) == pytest.approx((0.5, 0.7))
    assert shift["ks_statistic"] == pytest.approx(3 / 7) and shift["psi"] > 0
    # and on the 5 reviewed jobs both scored, A misses one fake and flags one real, B makes no error
    a, b = figures["reviewed"]["a"], figures["reviewed"]["b"]
    assert (a["n"], a["fake"], a["false_positives"], a["false_negatives"]) == (5, 3, 1, 1)
    assert a["roc_auc"] == pytest.approx(4 / 6)
    assert (b["false_positives"], b["false_negatives"], b["roc_auc"]) == (0, 0, 1.0)

    # And the text form says the same
    assert main(["engines", "compare", name, "1", "2", "--db", store.url]) == 0
    text = capsys.readouterr().out
    assert "3 of 6 jobs decided by both agree: agreement 0.500" in text and "ok→abstained 1" in text


def test_compare_of_versions_without_common_jobs_fails(two_versions: tuple[Store, str], capsys) -> None:
    store, name = two_versions
    assert main(["engines", "compare", name, "1", "3", "--db", store.url]) == 1
    assert "no job has verdicts of both" in capsys.readouterr().err


@pytest.fixture
def engines(tmp_path: Path, engine_manifest, two_versions: tuple[Store, str]) -> EngineStore:
    """An engine store holding versions 1 (current) and 2 of the compared engine."""
    _, name = two_versions
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"not really onnx")
    store = EngineStore(tmp_path / "engines")
    for _ in range(2):
        store.add(engine_manifest(name), artifact)
    store.promote(name, 1)
    return store


def promote(engines: EngineStore, name: str, *flags: str) -> int:
    return main(["--engine-store", str(engines.root), "engines", "promote", name, "2", *flags])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--require-shadow-verdicts", "10"], "9 shadow verdicts (required 10)"),
        (["--require-agreement", "0.6"], "agreement with v0001 0.500 on 6 jobs decided by both (required 0.6)"),
        (["--require-reviewed-auc", "1.01"], "reviewed ROC-AUC 1.000 on 5 jobs, 3 fake (required 1.01)"),
    ],
)
def test_promotion_is_refused_by_each_unmet_requirement(
    engines: EngineStore, two_versions: tuple[Store, str], flags: list[str], message: str, capsys
) -> None:
    store, name = two_versions
    history = engines.history(name)
    # When v2 is promoted with a requirement it does not meet
    assert promote(engines, name, "--db", store.url, *flags) == 2

    # Then one line says why, and nothing changed in the store
    err = capsys.readouterr().err.strip()
    assert err == f"engine {name} v0002 NOT promoted: {message}"
    assert engines.current_version(name) == 1 and engines.history(name) == history


def test_promotion_goes_ahead_when_every_requirement_is_met(engines: EngineStore, two_versions: tuple[Store, str]):
    store, name = two_versions
    flags = ["--require-shadow-verdicts", "9", "--require-agreement", "0.5", "--require-reviewed-auc", "1.0"]
    assert promote(engines, name, "--db", store.url, "--reason", "shadowed a week", *flags) == 0
    assert engines.current_version(name) == 2
    reason = engines.history(name)[-1].reason
    assert reason.startswith("shadowed a week; requirements met: 9 shadow verdicts") and "agreement" in reason


def test_several_unmet_requirements_share_one_line_and_agreement_needs_a_current_version(
    tmp_path: Path, engine_manifest, two_versions: tuple[Store, str], capsys
) -> None:
    store, name = two_versions
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"x")
    engines = EngineStore(tmp_path / "fresh")
    for _ in range(2):
        engines.add(engine_manifest(name), artifact)
    flags = ["--require-agreement", "0.1", "--require-shadow-verdicts", "100"]
    assert promote(engines, name, "--db", store.url, *flags) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        f"engine {name} v0002 NOT promoted: 9 shadow verdicts (required 100); no current version to agree with"
    ]
    assert engines.current_version(name) is None


def test_without_requirements_promotion_reads_no_database(engines: EngineStore, two_versions, tmp_path: Path):
    _, name = two_versions
    assert promote(engines, name, "--db", f"sqlite:///{tmp_path}/absent.db") == 0 and engines.current_version(name) == 2
