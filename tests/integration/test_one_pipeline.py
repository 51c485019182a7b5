"""One pipeline: the same media and engine give identical verdict rows through ``daemon scan`` and ``daemon run``.

Both console scripts run as subprocesses on one database and one engine store: ``daemon scan`` over a folder,
``daemon run`` fed the same files by ``daemon submit``. Every stored column of each file's verdict, and of its
frame scores, tracks and masks, must be equal, except those naming the job's origin or time.

Scores are compared exactly. ONNX Runtime's CPU kernels do give float32 noise that depends on the batch: a
logit moves by up to 5e-7 when a clip's crops run one at a time instead of 32 at once. So both commands run
with ``batch_max_frames=1`` (a job is never split: each job is its own engine batch, whatever the timing),
which makes the batches the same by construction; a path that batched or aggregated differently from the
other would show as unequal scores.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from sqlalchemy import bindparam, text

from deepsift.daemon.db import make_database

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAEMON = Path(sys.executable).parent / "daemon"

# What names the job's origin or its time, not the judgement: left out of the comparison (media_uri is
# compared as the file it names).
ORIGIN_COLUMNS = {"id", "job_id", "source", "media_uri", "created_at", "submitted_at", "timings_ms", "job_metadata"}
CHILD_TABLES = ("verdict_frames", "verdict_tracks", "verdict_masks")
SAME_SETTINGS = {
    "DEEPSIFT_ENGINE_NAME": "demo",
    "DEEPSIFT_FRAMES_PER_VIDEO": "8",
    "DEEPSIFT_BATCH_MAX_FRAMES": "1",  # each job its own engine batch (see the module docstring)
    "DEEPSIFT_INFERENCE_THREADS": "1",
    # Both commands judge the same bytes on one database: with reuse, the second would answer from the first.
    "DEEPSIFT_REUSE_VERDICTS": "false",
}


@pytest.fixture
def media(tmp_path: Path, demo_media: tuple[Path, dict[str, str]]) -> Path:
    """Two clips, two photos, the photo without a face, and a truncated clip (an error with media facts)."""
    source, _ = demo_media
    folder = tmp_path / "uploads"
    folder.mkdir()
    for name in ("real_clip_1.mp4", "fake_clip_1.mp4", "real_photo_1.jpg", "fake_photo_1.jpg", "no_face_coffee.jpg"):
        shutil.copy(source / name, folder / name)
    clip = (source / "real_clip_2.mp4").read_bytes()
    (folder / "truncated_clip.mp4").write_bytes(clip[: len(clip) // 2])
    return folder


def _env(settings: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPSIFT_")}
    return {**env, **SAME_SETTINGS, **settings}


def _scan(database_url: str, store_root: Path, folder: Path) -> None:
    env = _env({"DEEPSIFT_DATABASE_URL": database_url, "DEEPSIFT_ENGINE_STORE": str(store_root)})
    result = subprocess.run([str(DAEMON), "scan", str(folder)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def _run_settings(database_url: str, store_root: Path, folder: Path, kafka_broker: Any) -> dict[str, str]:
    return {
        "DEEPSIFT_DATABASE_URL": database_url,
        "DEEPSIFT_ENGINE_STORE": str(store_root),
        "DEEPSIFT_KAFKA_BOOTSTRAP_SERVERS": kafka_broker.bootstrap,
        "DEEPSIFT_KAFKA_TOPIC": kafka_broker.create_topic(1, "jobs"),
        "DEEPSIFT_KAFKA_DEAD_LETTER_TOPIC": kafka_broker.create_topic(1, "dead"),
        "DEEPSIFT_KAFKA_GROUP_ID": f"g{uuid.uuid4().hex[:10]}",
        "DEEPSIFT_KAFKA_SESSION_TIMEOUT_MS": "3000",
        "DEEPSIFT_KAFKA_HEARTBEAT_INTERVAL_MS": "500",
        "DEEPSIFT_MEDIA_ROOTS": str(folder),
        **SAME_SETTINGS,
    }


def _submit(settings: dict[str, str], folder: Path) -> list[str]:
    result = subprocess.run(
        [str(DAEMON), "submit", "--metadata", json.dumps({"origin": "submit"}), str(folder)],
        env=_env(settings), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.split()


def _rows(database_url: str, where: str, **params: Any) -> dict[str, dict[str, Any]]:
    """Per file name: the verdict row without its origin columns, with its child rows (ids dropped) in order."""
    query = text(f"SELECT * FROM verdicts WHERE {where} ORDER BY id")
    if isinstance(params.get("ids"), list):
        query = query.bindparams(bindparam("ids", expanding=True))
    engine = make_database(database_url)
    found: dict[str, dict[str, Any]] = {}
    try:
        with engine.connect() as c:
            for row in c.execute(query, params).mappings():
                path = Path(unquote(urlsplit(row["media_uri"]).path)).resolve()
                verdict = {k: _json(v) for k, v in row.items() if k not in ORIGIN_COLUMNS}
                for table in CHILD_TABLES:
                    children = c.execute(text(f"SELECT * FROM {table} WHERE verdict_id = :v ORDER BY id"),
                                         {"v": row["id"]}).mappings()  # fmt: skip
                    verdict[table] = [{k: v for k, v in child.items() if k not in ("id", "verdict_id")}
                                      for child in children]  # fmt: skip
                assert path.name not in found, f"two verdicts for {path}"
                found[path.name] = {"path": path, **verdict}
    finally:
        engine.dispose()
    return found


def _json(value: Any) -> Any:
    """SQLite returns JSON columns to a plain-text query as text."""
    return json.loads(value) if isinstance(value, str) and value[:1] in "{[" else value


def test_scan_and_run_store_identical_verdicts_for_the_same_media(database_url, demo_store, media, kafka_broker,
                                                                  start_daemon):  # fmt: skip
    # Given a folder with clips, photos, a photo without a face and a truncated clip, and one engine store
    names = {p.name for p in media.iterdir()}
    # When `daemon scan` judges the folder
    _scan(database_url, demo_store.root, media)
    scanned = _rows(database_url, "source = 'scan' AND media_uri LIKE :prefix", prefix=media.resolve().as_uri() + "/%")
    # and `daemon run` judges the same files, submitted as jobs on the broker
    settings = _run_settings(database_url, demo_store.root, media, kafka_broker)
    daemon = start_daemon(settings)
    daemon.wait_ready()
    job_ids = _submit(settings, media)
    stored = lambda: len(_rows(database_url, "job_id IN :ids", ids=job_ids)) == len(names)  # noqa: E731
    _wait(lambda: daemon.process.poll() is not None or stored(), 180, "a verdict for every submitted job")
    assert daemon.process.poll() is None, daemon.log()[-3000:]
    daemon.stop(signal.SIGTERM)
    assert daemon.wait(timeout=40) == 0, daemon.log()[-3000:]
    streamed = _rows(database_url, "job_id IN :ids", ids=job_ids)
    # Then each file has one verdict from each command, about the same file
    assert set(scanned) == set(streamed) == names
    assert all(scanned[n]["path"] == streamed[n]["path"] == media.resolve() / n for n in names)
    # and the comparison covers every outcome, scores, faces and tracks (it is not vacuous)
    assert {n: (scanned[n]["status"], scanned[n]["code"]) for n in ("no_face_coffee.jpg", "truncated_clip.mp4")} == {
        "no_face_coffee.jpg": ("abstained", "no_face"),
        "truncated_clip.mp4": ("error", "truncated_media"),
    }
    judged = names - {"no_face_coffee.jpg", "truncated_clip.mp4"}
    assert {scanned[n]["status"] for n in judged} == {"ok"}
    assert len({scanned[n]["p_fake"] for n in judged}) == len(judged)
    assert all(len(scanned[n]["verdict_frames"]) == 8 and scanned[n]["verdict_tracks"] for n in judged if "clip" in n)
    assert all(f["x1"] is not None and f["track_id"] is not None for n in judged for f in scanned[n]["verdict_frames"])
    # and every column but the job's origin and time is equal: scores exactly, frame by frame
    for name in sorted(names):
        assert streamed[name] == scanned[name], name


def _wait(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)
