"""Hot reload end to end: an engine promoted while `daemon scan` or `daemon run` works takes over between
jobs — every job is judged exactly once, both engines appear in the verdicts, the new one in the later ones."""

from __future__ import annotations

import argparse
import io
import signal
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import text
from structlog.testing import capture_logs

from deepsift.daemon.cli import cmd_scan
from deepsift.daemon.db import make_database
from deepsift.daemon.repository import VerdictRepository
from deepsift.daemon.settings import Settings
from deepsift.engines.manifest import EngineManifest
from deepsift.engines.store import EngineStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

THRESHOLDS = {1: 0.5, 2: 0.0}  # v2 calls everything fake, so the switch shows in the labels too


@pytest.fixture
def hot_store(full_frame_store: EngineStore, tmp_path: Path) -> tuple[EngineStore, str]:
    """A private store with the tiny engine under a name of this test's own: v1 current, v2 ready to promote."""
    source = full_frame_store.path("tiny-full", full_frame_store.current_version("tiny-full"))
    manifest = EngineManifest.read(source)
    name = f"hot-{uuid.uuid4().hex[:8]}"
    store = EngineStore(tmp_path / "engines")
    for threshold in THRESHOLDS.values():
        store.add(manifest.model_copy(update={"name": name, "threshold": threshold}), source / manifest.artifact)
    store.promote(name, 1)
    return store, name


def _verdicts(database_url: str, engine_name: str) -> list[dict[str, Any]]:
    """Every verdict this engine name made (both versions), in the order they were stored."""
    engine = make_database(database_url)
    try:
        with engine.connect() as c:
            rows = c.execute(
                text("SELECT id, job_id, media_uri, engine_version, threshold, label FROM verdicts "
                     "WHERE engine_name = :name ORDER BY id"),
                {"name": engine_name},
            )  # fmt: skip
            return [dict(row) for row in rows.mappings()]
    finally:
        engine.dispose()


def _recorded_versions(database_url: str, engine_name: str) -> list[int]:
    engine = make_database(database_url)
    try:
        return [m.version for m in VerdictRepository(engine).engine_manifests() if m.name == engine_name]
    finally:
        engine.dispose()


def _switched_in_order(rows: list[dict[str, Any]]) -> None:
    """Both versions judged, v1 before v2, each verdict with its own engine's threshold."""
    versions = [row["engine_version"] for row in rows]
    assert set(versions) == {1, 2}, versions
    assert versions == sorted(versions), f"a v1 verdict after a v2 one: {versions}"
    assert all(row["threshold"] == THRESHOLDS[row["engine_version"]] for row in rows)
    assert {row["label"] for row in rows if row["engine_version"] == 2} == {"fake"}


class _PromoteAfterFirstRow(io.StringIO):
    """The scan's table output: after the first verdict row, promote v2 and hold the scan until it serves."""

    HEADER_LINES = 2

    def __init__(self, store: EngineStore, name: str, logs: list[dict[str, Any]]) -> None:
        super().__init__()
        self.store, self.name, self.logs = store, name, logs
        self.promoted = False

    def write(self, s: str) -> int:
        written = super().write(s)
        if not self.promoted and self.getvalue().count("\n") > self.HEADER_LINES:
            self.promoted = True
            self.store.promote(self.name, 2)
            deadline = time.monotonic() + 60
            while not any(e["event"] == "engine_switched" for e in self.logs):
                assert time.monotonic() < deadline, "the scan did not switch to the promoted engine"
                time.sleep(0.02)
        return written


def test_a_scan_takes_up_an_engine_promoted_midway(database_url, hot_store, tmp_path):
    # Given 12 images and a scan following the store's current engine (v1) every 50 ms
    store, name = hot_store
    folder = tmp_path / "uploads"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / f"image_{i:02d}.png")
    settings = Settings(
        database_url=database_url, engine_store=store.root, engine_name=name, engine_poll_s=0.05,
        inference_threads=1, prefetch=2,
    )  # fmt: skip
    # When v2 is promoted as soon as the first verdict is printed
    with capture_logs() as logs:
        out = _PromoteAfterFirstRow(store, name, logs)
        assert cmd_scan(settings, argparse.Namespace(paths=[folder]), out) == 0
    # Then every file has exactly one verdict, v1's first and v2's after, each with its engine's threshold
    rows = _verdicts(database_url, name)
    assert Counter(row["media_uri"] for row in rows) == {p.resolve().as_uri(): 1 for p in folder.iterdir()}
    _switched_in_order(rows)
    # and both engines were recorded, and the switch logged once
    assert sorted(_recorded_versions(database_url, name)) == [1, 2]
    assert [(e["old_version"], e["new_version"]) for e in logs if e["event"] == "engine_switched"] == [(1, 2)]
    assert out.getvalue().rstrip().endswith("12 files: 12 ok")


IMAGES = [f"image_{i}.png" for i in range(8)]


def _engine_info(daemon, name: str, version: int) -> float | None:
    """The daemon's deepsift_engine_info sample for one engine version (None when absent)."""
    series = f'deepsift_engine_info{{name="{name}",version="{version}"}} '
    samples = [line for line in daemon.get("/metrics")[1].splitlines() if line.startswith(series)]
    return float(samples[0].rsplit(" ", 1)[1]) if samples else None


def _committed_total(stream) -> int:
    return sum(o or 0 for o in stream.broker.committed(stream.group, stream.topic, stream.partitions).values())


def test_a_running_daemon_switches_engines_without_dropping_or_doubling_jobs(
    database_url, hot_store, stream_setup, start_daemon
):
    # Given a daemon serving v1 (one prepare worker, so verdicts are stored in the order jobs were taken)
    store, name = hot_store
    stream = stream_setup(
        database_url, partitions=2, DEEPSIFT_ENGINE_STORE=str(store.root), DEEPSIFT_ENGINE_NAME=name,
        DEEPSIFT_ENGINE_POLL_S="0.2", DEEPSIFT_PREPARE_WORKERS="1",
    )  # fmt: skip
    daemon = start_daemon(stream.settings)
    daemon.wait_ready()
    assert _engine_info(daemon, name, 1) == 1
    first = [stream.job("clip.mp4", i, frames=16) for i in range(16)]
    stream.broker.produce(stream.topic, [value for _, value in first], partitions=stream.partitions)
    # When v2 is promoted after the first verdicts, while the rest of the first jobs are in flight
    stream.wait(lambda: len(_verdicts(stream.database_url, name)) >= 3, 120, "the first verdicts")
    store.promote(name, 2)
    stream.wait(lambda: daemon.events("engine_switched"), 60, "the daemon to switch engines")
    assert daemon.ready()
    # and more jobs arrive after the switch
    later = [stream.job(IMAGES[i % 8], 100 + i) for i in range(8)]
    stream.broker.produce(stream.topic, [value for _, value in later], partitions=stream.partitions)
    # Then every job has exactly one verdict and every offset is committed
    job_ids = [job_id for job_id, _ in first + later]
    stream.wait(lambda: len(_verdicts(stream.database_url, name)) >= len(job_ids), 180, "a verdict for every job")
    stream.wait(lambda: _committed_total(stream) == len(job_ids), 60, "every offset committed")
    rows = _verdicts(stream.database_url, name)
    assert Counter(row["job_id"] for row in rows) == dict.fromkeys(job_ids, 1)
    # and the first verdicts are v1's, the jobs taken after the switch v2's, in that order
    _switched_in_order(rows)
    by_job = {row["job_id"]: row["engine_version"] for row in rows}
    assert {by_job[job_id] for job_id, _ in later} == {2}
    # and the engines are recorded, the info gauge names the one serving, the switch was logged once
    assert sorted(_recorded_versions(stream.database_url, name)) == [1, 2]
    assert (_engine_info(daemon, name, 1), _engine_info(daemon, name, 2)) == (0, 1)
    assert [(e["old_version"], e["new_version"]) for e in daemon.events("engine_switched")] == [(1, 2)]
    daemon.stop(signal.SIGTERM)
    assert daemon.wait(timeout=40) == 0
