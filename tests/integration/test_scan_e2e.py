"""End to end: the ``daemon`` console script scans real H.264 clips and images into SQL verdicts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from deepsift.daemon.db import make_database
from deepsift.engines.store import EngineStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAEMON = Path(sys.executable).parent / "daemon"


def _bad_files(folder: Path, good_clip: Path) -> dict[str, str]:
    """Broken media next to the good ones, with the error code each must get."""
    (folder / "zero_bytes.mp4").write_bytes(b"")
    (folder / "notes_not_media.mp4").write_text("this is a text file, not a video\n" * 20)
    data = good_clip.read_bytes()
    (folder / "truncated_clip.mp4").write_bytes(data[: len(data) // 2])
    rng = np.random.default_rng(0)
    (folder / "random_bytes.mov").write_bytes(rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    return {
        "zero_bytes.mp4": "empty_media",
        "notes_not_media.mp4": "not_media",
        "truncated_clip.mp4": "truncated_media",
        "random_bytes.mov": "not_media",
    }


def _run_daemon(
    database_url: str, store: EngineStore, *args: str, timeout: float = 600, **settings: str
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEEPSIFT_DATABASE_URL": database_url, "DEEPSIFT_ENGINE_STORE": str(store.root), **settings}
    return subprocess.run([str(DAEMON), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _verdicts(database_url: str, folder: Path) -> dict[str, dict]:
    engine = make_database(database_url)
    try:
        with engine.connect() as c:
            rows = c.execute(
                text("SELECT * FROM verdicts WHERE media_uri LIKE :prefix ORDER BY id"),
                {"prefix": folder.resolve().as_uri() + "/%"},
            ).mappings()
            return {row["media_uri"].rsplit("/", 1)[1]: dict(row) for row in rows}
    finally:
        engine.dispose()


def _count(database_url: str, table: str, verdict_id: int) -> int:
    engine = make_database(database_url)
    try:
        with engine.connect() as c:
            return c.execute(text(f"SELECT COUNT(*) FROM {table} WHERE verdict_id = :v"), {"v": verdict_id}).scalar()
    finally:
        engine.dispose()


@pytest.fixture
def scan_folder(tmp_path: Path, demo_media: tuple[Path, dict[str, str]]) -> tuple[Path, dict[str, str], dict[str, str]]:
    source, truth = demo_media
    folder = tmp_path / "uploads"
    shutil.copytree(source, folder)
    bad = _bad_files(folder, folder / "real_clip_1.mp4")
    return folder, truth, bad


def test_scan_judges_every_file_and_separates_real_from_fake(database_url, demo_store, scan_folder):
    # Given demo clips/images with known labels plus corrupt, truncated, empty and non-media files
    folder, truth, bad = scan_folder
    # When the daemon entry point migrates nothing (already done) and scans the folder
    result = _run_daemon(database_url, demo_store, "scan", str(folder))
    # Then it exits 0 and stores exactly one verdict per file
    assert result.returncode == 0, result.stderr[-3000:]
    verdicts = _verdicts(database_url, folder)
    assert set(verdicts) == set(truth) | set(bad)
    # bad files are error verdicts with their reason code, and never stopped the scan
    assert {name: verdicts[name]["status"] for name in bad} == dict.fromkeys(bad, "error")
    assert {name: verdicts[name]["code"] for name in bad} == bad
    # the image without a face abstains instead of guessing
    assert verdicts["no_face_coffee.jpg"]["status"] == "abstained"
    assert verdicts["no_face_coffee.jpg"]["code"] == "no_face"
    assert verdicts["no_face_coffee.jpg"]["p_fake"] is None
    # every labelled file got a score, and the engine separates fake from real
    scored = {name: v for name, v in verdicts.items() if truth.get(name) in ("real", "fake")}
    assert all(v["status"] == "ok" for v in scored.values()), {n: v["code"] for n, v in scored.items()}
    fake = [v["p_fake"] for n, v in scored.items() if truth[n] == "fake"]
    real = [v["p_fake"] for n, v in scored.items() if truth[n] == "real"]
    assert min(fake) > max(real), (fake, real)
    # and the table on stdout lists every file
    for name in verdicts:
        assert name[:28] in result.stdout


ROOT_PROOF_UNREADABLE = Path("/proc/sys/vm/drop_caches")  # a sysctl file of mode 0200 refuses root a read too


def _unreadable_file(path: Path, like: Path) -> Path:
    """A media file this user cannot open: mode 000, or (as root, who reads those) a link to a file that refuses
    root too."""
    shutil.copy(like, path)
    path.chmod(0)
    if os.access(path, os.R_OK):
        path.unlink()
        if os.access(ROOT_PROOF_UNREADABLE, os.R_OK) or not ROOT_PROOF_UNREADABLE.exists():
            pytest.skip("no file here that this user cannot read")
        path.symlink_to(ROOT_PROOF_UNREADABLE)
    return path


def _hostile_paths(folder: Path, good: Path) -> dict[str, str]:
    """Paths that are no readable files, among the good media, with the error code each must get."""
    os.symlink("loop_b.mp4", folder / "loop_a.mp4")
    os.symlink("loop_a.mp4", folder / "loop_b.mp4")
    os.symlink("deleted_upload.jpg", folder / "dangling.jpg")
    os.mkfifo(folder / "fifo.mp4")
    _unreadable_file(folder / "unreadable.mp4", good)
    os.mkfifo(folder / "pipe.log")  # no media suffix, inside a folder: skipped as any non-media name
    os.symlink("..", folder / "parent.mp4")  # a symlinked folder: not followed, so no loop and no verdict
    return {
        "loop_a.mp4": "symlink_loop",
        "loop_b.mp4": "symlink_loop",
        "dangling.jpg": "not_found",
        "fifo.mp4": "not_regular_file",
        "unreadable.mp4": "unreadable",
    }


@pytest.mark.timeout(900)  # the demo engine trains first; the scan itself must not hang on the FIFO
def test_scan_gives_every_path_a_verdict_goes_on_past_bad_paths_and_exits_2(database_url, demo_store, scan_folder):
    # Given the demo media with broken files, plus symlink loops, a dangling link, a FIFO, an unreadable file
    folder, truth, bad = scan_folder
    hostile = _hostile_paths(folder, folder / "real_clip_1.mp4")
    missing = folder / "never_uploaded.mp4"
    # When the folder is scanned with /dev/null and a missing file named after it
    result = _run_daemon(database_url, demo_store, "scan", str(folder), "/dev/null", str(missing), timeout=300)
    # Then it finishes, with exit status 2: every file has a verdict, but some paths could not be read as files
    assert result.returncode == 2, result.stderr[-3000:]
    verdicts = _verdicts(database_url, folder)
    assert set(verdicts) == set(truth) | set(bad) | set(hostile) | {missing.name}
    codes = {name: (v["status"], v["code"]) for name, v in verdicts.items()}
    assert {n: codes[n] for n in hostile} == {n: ("error", code) for n, code in hostile.items()}
    assert codes[missing.name] == ("error", "not_found")
    assert {n: codes[n] for n in bad} == {n: ("error", code) for n, code in bad.items()}
    # the good files before and after the bad paths are judged from their pixels
    judged = {n for n in truth if truth[n] in ("real", "fake")}
    assert {n: codes[n][0] for n in judged} == dict.fromkeys(judged, "ok")
    # /dev/null, named, has its verdict too (a device is never opened)
    engine = make_database(database_url)
    with engine.connect() as c:
        null = c.execute(text("SELECT status, code FROM verdicts WHERE media_uri = 'file:///dev/null'")).one()
    engine.dispose()
    assert tuple(null) == ("error", "not_regular_file")
    # and the footer counts each kind of path that could not be read
    assert "7 paths could not be read as files: 2 not_found, 2 not_regular_file, 2 symlink_loop, 1 unreadable" in (
        result.stdout
    )


def test_scan_help_documents_exit_codes_and_path_codes():
    result = subprocess.run([str(DAEMON), "scan", "--help"], capture_output=True, text=True, check=True)
    for text_ in ("exit status", "symlink_loop", "unreadable", "not_regular_file", "not_found", "store_failed"):
        assert text_ in result.stdout


def test_video_verdict_has_media_facts_engine_and_face_scores(database_url, demo_store, scan_folder):
    folder, _, _ = scan_folder
    # Other tests judged these bytes on the shared database: judge them afresh, not as a re-upload
    fresh = {"DEEPSIFT_REUSE_VERDICTS": "false"}
    assert _run_daemon(database_url, demo_store, "scan", str(folder / "fake_clip_1.mp4"), **fresh).returncode == 0
    v = _verdicts(database_url, folder)["fake_clip_1.mp4"]
    assert v["reused_from"] is None
    assert (v["media_type"], v["codec"], v["width"], v["height"]) == ("video", "h264", 640, 360)
    assert v["fps"] == pytest.approx(25.0) and v["duration_s"] == pytest.approx(2.0, abs=0.1)
    assert v["frames_requested"] == 32 and v["frames_sampled"] == 32
    assert v["engine_name"] == "demo" and v["engine_version"] == 1
    assert v["label"] == ("fake" if v["p_fake"] >= v["threshold"] else "real")
    # one face per sampled frame, all in one track
    assert _count(database_url, "verdict_frames", v["id"]) == 32
    assert _count(database_url, "verdict_tracks", v["id"]) == 1


def test_rescan_is_idempotent_and_a_new_engine_adds_history(database_url, demo_store, scan_folder, tmp_path):
    folder, _, _ = scan_folder
    target = folder / "real_photo_1.jpg"
    assert _run_daemon(database_url, demo_store, "scan", str(target)).returncode == 0
    first = _verdicts(database_url, folder)
    # When the same file is scanned again with the same engine, nothing new is stored
    again = _run_daemon(database_url, demo_store, "scan", str(target))
    assert "stored before" in again.stdout
    assert _verdicts(database_url, folder) == first
    # When a new engine version is promoted (a copy of v1 as v2), a second verdict is added
    store = EngineStore(tmp_path / "engines2")
    shutil.copytree(demo_store.root, store.root, symlinks=True)
    from deepsift.engines.manifest import EngineManifest

    v1 = demo_store.resolve("demo")
    store.add(EngineManifest.read(v1), v1 / "model.onnx")
    store.promote("demo", 2)
    assert _run_daemon(database_url, store, "scan", str(target)).returncode == 0
    engine = make_database(database_url)
    with engine.connect() as c:
        versions = (
            c.execute(
                text("SELECT engine_version FROM verdicts WHERE media_uri = :u ORDER BY id"), {"u": target.as_uri()}
            )
            .scalars()
            .all()
        )
        latest = c.execute(
            text("SELECT engine_version FROM latest_verdicts WHERE media_uri = :u"), {"u": target.as_uri()}
        ).scalar()
    engine.dispose()
    assert versions == [1, 2] and latest == 2


def test_scan_without_migrated_database_fails_clearly(tmp_path, demo_store, demo_media):
    folder, _ = demo_media
    result = _run_daemon(f"sqlite:///{tmp_path / 'fresh.db'}", demo_store, "scan", str(folder))
    assert result.returncode == 1
    assert "daemon db upgrade" in result.stderr


def test_db_upgrade_then_scan_on_embedded_defaults(tmp_path, demo_store, demo_media):
    # Given a working directory with nothing in it but the engine store, using the default SQLite URL
    folder, truth = demo_media
    shutil.copytree(demo_store.root, tmp_path / "var" / "engines", symlinks=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPSIFT_")}
    run = lambda *a: subprocess.run([str(DAEMON), *a], env=env, cwd=tmp_path, capture_output=True, text=True)  # noqa: E731
    # When the operator migrates and scans one image
    assert run("db", "upgrade").returncode == 0
    result = run("scan", str(folder / "fake_photo_1.jpg"))
    # Then the verdict lands in var/deepsift.db
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "var" / "deepsift.db").exists()
    assert "fake_photo_1.jpg" in result.stdout and truth["fake_photo_1.jpg"] == "fake"
