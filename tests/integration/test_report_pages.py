"""Evidence pages in a real headless browser: ``daemon scan --report`` over real clips and photos, ``daemon report``
for one verdict (also after its media is deleted or changed), and the pages ``daemon run`` serves on its health
port. Each page is opened in Debian's chromium; the checks read the DOM after its scripts ran and a screenshot."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import text

from deepsift.daemon.db import make_database, upgrade_database
from deepsift.daemon.report.http import VerdictPages
from deepsift.daemon.report.media import MediaAccess
from deepsift.daemon.report.pages import ReportSource
from deepsift.daemon.repository import VerdictRepository
from deepsift.daemon.stream.health import Health, HealthServer
from deepsift.engines.store import EngineStore
from tests import browser

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAEMON = Path(sys.executable).parent / "daemon"


def _daemon(database_url: str, store: EngineStore, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEEPSIFT_DATABASE_URL": database_url, "DEEPSIFT_ENGINE_STORE": str(store.root)}
    return subprocess.run([str(DAEMON), *args], env=env, capture_output=True, text=True, timeout=600, check=False)


class Scanned:
    """A scan of the demo media plus a broken file, with its report folder and its verdict rows."""

    def __init__(self, folder: Path, report: Path, database_url: str, store: EngineStore) -> None:
        self.folder, self.report, self.database_url, self.store = folder, report, database_url, store
        engine = make_database(database_url)
        try:
            with engine.connect() as c:
                rows = c.execute(text("SELECT * FROM verdicts ORDER BY id")).mappings().all()
                self.rows = {row["media_uri"].rsplit("/", 1)[1]: dict(row) for row in rows}
                self.boxes = {
                    (row["verdict_id"], row["frame_index"]): row["n"]
                    for row in c.execute(
                        text(
                            "SELECT verdict_id, frame_index, COUNT(*) AS n FROM verdict_frames "
                            "WHERE x0 IS NOT NULL GROUP BY verdict_id, frame_index"
                        )
                    ).mappings()
                }
        finally:
            engine.dispose()

    def row(self, name: str) -> dict[str, Any]:
        return self.rows[name]

    def page(self, name: str) -> Path:
        return self.report / f"verdict-{self.row(name)['id']}.html"


@pytest.fixture(scope="module")
def scanned(
    demo_store: EngineStore, demo_media: tuple[Path, dict[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> Scanned:
    scratch = tmp_path_factory.mktemp("report-scan")
    folder = scratch / "media"
    shutil.copytree(demo_media[0], folder, ignore=shutil.ignore_patterns("*.csv"))
    (folder / "broken_clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000))
    database_url = f"sqlite:///{scratch / 'verdicts.db'}"
    upgrade_database(database_url)
    result = _daemon(database_url, demo_store, "scan", str(folder), "--report", str(scratch / "report"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"report: {scratch / 'report' / 'index.html'}" in result.stdout
    return Scanned(folder, scratch / "report", database_url, demo_store)


def _check_frames(document: browser.Document, scanned: Scanned, verdict_id: int, pictures: bool) -> int:
    """Every frame shown has one box element per face SQL holds for it; returns the number of frames shown."""
    frames = document.by_class("frame")
    boxes = document.by_class("face-box")
    for frame in frames:
        index = frame.attrs["data-frame-index"]
        expected = scanned.boxes.get((verdict_id, int(index)), 0)
        assert int(frame.attrs["data-faces"]) == expected, (verdict_id, index)
        assert sum(1 for box in boxes if box.attrs["data-frame-index"] == index) == expected, (verdict_id, index)
    assert len(boxes) == sum(int(f.attrs["data-faces"]) for f in frames)
    assert len(document.by_class("picture")) == (len(frames) if pictures else 0)
    return len(frames)


def test_scan_report_index_sorts_and_links_every_verdict(scanned: Scanned, tmp_path: Path) -> None:
    index = scanned.report / "index.html"
    document = browser.dom(index.as_uri() + "#sort=p_fake-desc", tmp_path / "profile")
    rows = [e for e in document.by_tag("tr") if "data-id" in e.attrs]
    assert {int(r.attrs["data-id"]) for r in rows} == {row["id"] for row in scanned.rows.values()}
    scores = [float(r.attrs["data-p_fake"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    header = next(e for e in document.by_tag("th") if e.attrs.get("data-key") == "p_fake")
    assert header.attrs.get("aria-sort") == "descending"  # set by the page's script, which sorted the rows
    links = {e.attrs["href"] for e in document.by_tag("a")}
    assert {f"verdict-{row['id']}.html" for row in scanned.rows.values()} <= links
    assert all((scanned.report / link).is_file() for link in links if link.startswith("verdict-"))
    thumbnails = document.by_class("thumb")
    assert len(thumbnails) >= 4 and all(t.attrs["src"].startswith("data:image/") for t in thumbnails)
    assert not browser.blank(browser.screenshot(index.as_uri(), tmp_path / "index.png", tmp_path / "profile"))


@pytest.mark.parametrize("name", ["fake_clip_1.mp4", "real_clip_2.mp4", "fake_photo_1.jpg"])
def test_verdict_page_shows_the_verdict_timeline_and_every_face(scanned: Scanned, name: str, tmp_path: Path) -> None:
    row = scanned.row(name)
    page = scanned.page(name)
    document = browser.dom(page.as_uri(), tmp_path / "profile")
    assert row["status"] == "ok"
    assert document.by_id("verdict-label").content == row["label"]
    assert document.by_id("p-fake").content == f"P(fake) {row['p_fake']:.3f}"
    timeline = document.by_id("timeline")
    assert timeline.attrs["src"].startswith("data:image/png;base64,") and len(timeline.attrs["src"]) > 5000
    assert _check_frames(document, scanned, row["id"], pictures=True) >= 1
    assert document.by_class("crop"), "face crops beside the frames"
    assert "demo" in document.by_id("engine-card").content
    assert document.has_id("engine-evaluation")  # the validation record from the manifest
    assert row["decoder"] in document.by_id("decoder").content
    pixels = browser.screenshot(page.as_uri(), tmp_path / "page.png", tmp_path / "profile")
    assert not browser.blank(pixels)


def test_abstained_and_error_verdicts_get_pages(scanned: Scanned, tmp_path: Path) -> None:
    abstained = browser.dom(scanned.page("no_face_coffee.jpg").as_uri(), tmp_path / "profile")
    assert abstained.by_id("verdict-label").content == "abstained"
    assert "no_face" in abstained.by_id("verdict-code").content
    assert not abstained.by_class("face-box")
    assert len(abstained.by_class("picture")) == 1  # the photo it found no face in
    error = browser.dom(scanned.page("broken_clip.mp4").as_uri(), tmp_path / "profile")
    row = scanned.row("broken_clip.mp4")
    assert error.by_id("verdict-label").content == "error"
    assert row["code"] in error.by_id("verdict-code").content
    assert not error.has_id("timeline")


def test_report_command_unknown_verdict_or_job(scanned: Scanned) -> None:
    result = _daemon(scanned.database_url, scanned.store, "report", "987654")
    assert result.returncode == 3
    assert "no verdict with id 987654" in result.stderr
    result = _daemon(scanned.database_url, scanned.store, "report", "--job-id", "no-such-job")
    assert result.returncode == 3
    assert "no verdict for job 'no-such-job'" in result.stderr


def test_report_after_the_media_is_deleted_or_changed(scanned: Scanned, tmp_path: Path) -> None:
    for name, change in (("fake_clip_2.mp4", "deleted"), ("real_clip_1.mp4", "changed")):
        media = scanned.folder / name
        if change == "deleted":
            media.unlink()
        else:
            media.write_bytes(media.read_bytes()[::-1])
        row = scanned.row(name)
        out = tmp_path / f"{change}.html"
        by_job = _daemon(scanned.database_url, scanned.store, "report", "--job-id", row["job_id"], "--out", str(out))
        assert by_job.returncode == 0, by_job.stderr[-2000:]
        assert by_job.stdout.strip() == str(out)
        document = browser.dom(out.as_uri(), tmp_path / "profile")
        assert document.by_id("verdict-label").content == row["label"]
        note = document.by_id("media-note").content
        assert ("no longer at" in note) if change == "deleted" else ("has changed since the verdict" in note)
        assert _check_frames(document, scanned, row["id"], pictures=False) >= 1  # boxes from SQL, on blank frames
        assert not browser.blank(browser.screenshot(out.as_uri(), tmp_path / f"{change}.png", tmp_path / "profile"))


def _get(url: str) -> tuple[int, dict[str, str], str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def test_health_port_serves_verdict_pages_only_when_enabled(
    database_url: str, make_verdict: Any, tmp_path: Path
) -> None:
    engine = make_database(database_url)
    repository = VerdictRepository(engine)
    job_id = "upload/42 & <friends>"
    saved = repository.save(make_verdict(job_id=job_id, metadata={"note": "<script>alert(1)</script>"}))
    off = HealthServer(Health(), lambda: b"", "127.0.0.1", 0).start()
    on = HealthServer(Health(), lambda: b"", "127.0.0.1", 0, pages=True).start()
    try:
        assert _get(f"http://127.0.0.1:{off.port}/verdicts/{saved.id}")[0] == 404
        base = f"http://127.0.0.1:{on.port}"
        assert _get(f"{base}/verdicts/{saved.id}")[0] == 503  # the store is not open yet
        on.serve_pages(VerdictPages(ReportSource(repository, MediaAccess())))
        status, headers, body = _get(f"{base}/verdicts/{saved.id}")
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        document = browser.dom(f"{base}/verdicts/{saved.id}", tmp_path / "profile")
        assert document.by_id("verdict-label").content == "fake"
        assert not document.by_tag("script")  # the metadata's script is text, not an element
        assert "<script>alert(1)</script>" in document.by_id("job-metadata").content
        assert len(document.by_class("face-box")) == 2  # frame 0 holds two faces; the media is not there
        status, _, body = _get(f"{base}/verdicts?job_id={quote(job_id, safe='')}")
        assert status == 200 and f'href="/verdicts/{saved.id}"' in body
        assert _get(f"{base}/verdicts/987654321")[0] == 404
        assert _get(f"{base}/verdicts/abc")[0] == 404
        assert _get(f"{base}/verdicts?job_id=nothing-here")[0] == 404
        assert _get(f"{base}/verdicts")[0] == 400
    finally:
        on.close()
        off.close()
        engine.dispose()


def test_daemon_run_serves_the_pages_of_its_verdicts(postgres_url: str, stream_setup: Any, start_daemon: Any,
                                                     tmp_path: Path) -> None:  # fmt: skip
    # Given `daemon run` with the pages on, judging a clip from its media roots
    stream = stream_setup(postgres_url, partitions=1, DEEPSIFT_REPORT_HTTP="true")
    daemon = start_daemon(stream.settings)
    daemon.wait_ready()
    job_id, value = stream.job("clip.mp4")
    stream.broker.produce(stream.topic, [value])
    stream.wait(lambda: stream.verdicts([job_id]), 120, "the clip's verdict")
    (verdict,) = stream.verdicts([job_id])
    # Then its page is served, with the frames re-read from the media roots and the job's listing linking it
    status, body = daemon.get(f"/verdicts/{verdict['id']}")
    assert status == 200, body
    document = browser.dom(f"http://127.0.0.1:{daemon.health_port}/verdicts/{verdict['id']}", tmp_path / "profile")
    assert verdict["status"] == "ok" and document.has_id("timeline")
    assert document.by_id("verdict-label").content in ("real", "fake")
    assert len(document.by_class("picture")) == len(document.by_class("frame")) >= 1
    status, listing = daemon.get(f"/verdicts?job_id={quote(job_id, safe='')}")
    assert status == 200 and f'href="/verdicts/{verdict["id"]}"' in listing
    assert daemon.get("/verdicts/987654321")[0] == 404
    daemon.stop()
    assert daemon.wait(timeout=40) == 0
