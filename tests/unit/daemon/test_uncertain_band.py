"""Where people read verdicts, an ``uncertain`` label and its engine's band are shown: the scan table and the
report's verdict page and timeline. (The label itself: test_outputs.py.)"""

from __future__ import annotations

import base64
import io
from pathlib import Path

from deepsift.daemon.records import EngineIdentity, FrameScoreRecord, VerdictRecord
from deepsift.daemon.report.evidence import gather
from deepsift.daemon.report.media import MediaAccess
from deepsift.daemon.report.plots import timeline_png
from deepsift.daemon.report.render import IndexEntry, render_index, render_verdict
from deepsift.daemon.scan import ScanResult
from deepsift.daemon.table import VerdictTable
from deepsift.engines.manifest import BackendSpec, EngineManifest, UncertainBand
from deepsift.engines.preprocess import InputContract
from deepsift.engines.recipes import TaskSpec
from tests.browser import Document

BAND = UncertainBand(low=0.3, high=0.8, target_precision=0.95)


def manifest(band: UncertainBand | None = BAND) -> EngineManifest:
    return EngineManifest(
        name="det", version=2, recipe="demo-tiny", recipe_sha256="a" * 64, detector="siglip_binary", task=TaskSpec(),
        input=InputContract(size=8), backend=BackendSpec(name="onnxruntime", version="1"), artifact="model.onnx",
        artifact_sha256="b" * 64, weights_sha256="c" * 64, threshold=0.5, uncertain_band=band,
    )  # fmt: skip


def uncertain_verdict() -> VerdictRecord:
    frames = (FrameScoreRecord(0, 0.4, pts_s=0.0), FrameScoreRecord(5, 0.6, pts_s=0.5))
    return VerdictRecord(
        job_id="j", source="scan", media_uri="file:///nowhere/clip.mp4", status="ok",
        engine=EngineIdentity("det", 2, "b" * 64), media_type="video", label="uncertain", p_fake=0.5,
        threshold=0.5, frames=frames,
    )  # fmt: skip


def test_the_scan_table_shows_the_band_and_the_whole_label() -> None:
    out = io.StringIO()
    table = VerdictTable(out)
    table.header(manifest())
    table.row(ScanResult(uncertain_verdict(), 1, True, Path("clip.mp4")))
    header, _, row = out.getvalue().splitlines()
    assert "threshold 0.500, uncertain 0.300 <= p_fake < 0.800" in header
    assert row.split()[:5] == ["clip.mp4", "video", "ok", "uncertain", "0.500"]
    VerdictTable(out := io.StringIO()).header(manifest(band=None))
    assert "uncertain" not in out.getvalue()


def test_a_verdict_page_states_the_band_and_shades_it_on_the_timeline() -> None:
    # Given an uncertain verdict of an engine with a band
    record = uncertain_verdict()
    evidence = gather(record, 1, manifest(), MediaAccess())
    # Then the page labels it uncertain and states the band
    document = Document.parse(render_verdict(evidence))
    label = document.by_id("verdict-label")
    assert label.content == "uncertain" and "uncertain" in label.classes
    assert "0.300 ≤ P(fake) < 0.800" in document.by_id("uncertain-band").content
    # and its timeline is drawn with the band, unlike one of an engine without a band
    title = "det v2: P(fake) per sampled frame"
    timeline = base64.b64decode((evidence.timeline_uri or "").split(",", 1)[1])
    assert timeline == timeline_png(record.frames, 0.5, (0.3, 0.8), title)
    unbanded = gather(record, 1, manifest(band=None), MediaAccess())
    assert unbanded.band is None and unbanded.timeline_uri != evidence.timeline_uri
    assert "no band" in Document.parse(render_verdict(unbanded)).by_id("uncertain-band").content


def test_the_index_counts_uncertain_verdicts_apart() -> None:
    record = uncertain_verdict()
    html = render_index([IndexEntry(1, record, "verdict-1.html", None)], "scan")
    document = Document.parse(html)
    assert [e.content for e in document.by_class("uncertain")] == ["uncertain"]
    assert "1 verdict: 1 uncertain." in html
