"""The report's parts without a browser or a database: which media a page may re-read (and when it refuses), the
evidence gathered from a verdict, and HTML that keeps uploader-controlled text as text."""

from __future__ import annotations

import hashlib
import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepsift.daemon.records import EngineIdentity, FrameScoreRecord, MaskRecord, TrackSummaryRecord, VerdictRecord
from deepsift.daemon.report.evidence import gather
from deepsift.daemon.report.media import MediaAccess, read_frames
from deepsift.daemon.report.plots import timeline_png
from deepsift.daemon.report.render import IndexEntry, media_name, render_index, render_verdict
from deepsift.engines.media import decode_sampled, write_video
from tests.browser import Document

WIDTH, HEIGHT, N_FRAMES = 160, 96, 20


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real H.264 clip whose frames differ (a bar moving across a gradient)."""
    path = tmp_path_factory.mktemp("report-media") / "clip.mp4"
    ramp = np.linspace(0, 255, WIDTH, dtype=np.uint8)[None, :, None].repeat(HEIGHT, 0).repeat(3, 2)
    frames = []
    for i in range(N_FRAMES):
        frame = ramp.copy()
        frame[:, 8 * i : 8 * i + 8] = (255, 0, 0)
        frames.append(frame)
    write_video(path, frames, fps=10.0)
    return path


def _verdict(path: Path, source: str = "scan", **fields: object) -> VerdictRecord:
    sampled = [f.index for f in decode_sampled(path, 4).frames]
    frames = tuple(
        FrameScoreRecord(index, 0.2 + 0.2 * k, pts_s=index / 10, face_index=0, track_id=1, box=(10, 10, 60, 70))
        for k, index in enumerate(sampled)
    )
    record = VerdictRecord(
        job_id="job-1",
        source=source,
        media_uri=path.resolve().as_uri(),
        status="ok",
        engine=EngineIdentity("demo", 3, "ab" * 32),
        media_sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        media_type="video",
        label="fake",
        p_fake=0.8,
        threshold=0.5,
        aggregation="mean",
        frames_requested=4,
        frames_sampled=4,
        width=WIDTH,
        height=HEIGHT,
        frames=frames,
        tracks=(TrackSummaryRecord(1, 4, 0.5, sampled[0], sampled[-1]),),
    )
    return replace(record, **fields)


def test_scanned_media_is_re_read_at_the_sampled_frames(clip: Path) -> None:
    record = _verdict(clip)
    wanted = {record.frames[1].frame_index, record.frames[3].frame_index}
    frames = read_frames(record, wanted, MediaAccess())
    assert frames.note is None and set(frames.frames) == wanted
    decoded = {f.index: f.rgb for f in decode_sampled(clip, 4).frames}
    for index, rgb in frames.frames.items():
        assert np.array_equal(rgb, decoded[index])  # the very frame the pipeline scored


def test_changed_moved_and_remote_media_are_not_shown(clip: Path, tmp_path: Path) -> None:
    record = _verdict(clip)
    wanted = {record.frames[0].frame_index}
    changed = read_frames(replace(record, media_sha256="00" * 32), wanted, MediaAccess())
    assert not changed.available and "has changed since the verdict" in (changed.note or "")
    gone = read_frames(replace(record, media_uri=(tmp_path / "gone.mp4").as_uri()), wanted, MediaAccess())
    assert not gone.available and "no longer at" in (gone.note or "")
    remote = read_frames(replace(record, media_uri="https://example.com/a.mp4"), wanted, MediaAccess())
    assert not remote.available and "do not fetch it again" in (remote.note or "")


def test_job_media_is_re_read_only_under_the_media_roots(clip: Path, tmp_path: Path) -> None:
    record = _verdict(clip, source="kafka")
    wanted = {record.frames[0].frame_index}
    outside = read_frames(record, wanted, MediaAccess.of([tmp_path]))
    assert not outside.available and "outside the media roots" in (outside.note or "")
    assert not read_frames(record, wanted, MediaAccess()).available  # no roots: no file:// media at all
    inside = read_frames(record, wanted, MediaAccess.of([clip.parent]))
    assert inside.available


def test_evidence_shows_the_most_suspicious_frames_first_with_boxes_and_crops(clip: Path) -> None:
    record = _verdict(clip)
    evidence = gather(record, 7, None, MediaAccess(), top_frames=2)
    assert [f.index for f in evidence.frames] == [record.frames[3].frame_index, record.frames[2].frame_index]
    for frame in evidence.frames:
        assert frame.image_uri is not None and frame.image_uri.startswith("data:image/jpeg;base64,")
        (box,) = frame.boxes
        assert (box.left, box.top) == pytest.approx((100 * 10 / WIDTH, 100 * 10 / HEIGHT))
        assert box.crop_uri is not None and box.over_threshold == (box.p_fake >= 0.5)
    assert evidence.thumbnail_uri is not None and evidence.timeline_uri is not None
    html = render_verdict(evidence)
    document = Document.parse(html)
    assert len(document.by_class("face-box")) == 2 and len(document.by_class("picture")) == 2
    assert len(document.by_id("regions").text) > 0


def test_masks_are_laid_over_the_face_crop_and_unreadable_ones_say_so(clip: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 32), 255, np.uint8), mode="L").save(buffer, format="PNG")
    base = _verdict(clip)
    index = base.frames[0].frame_index
    record = replace(base, masks=(MaskRecord(index, buffer.getvalue(), 32, 32, 1), MaskRecord(index, b"\x89PNG", 2, 2)))
    good, bad = gather(record, 1, None, MediaAccess()).masks
    assert good.note is None and good.overlay_uri is not None
    overlay = Image.open(io.BytesIO(_decode(good.overlay_uri)))
    red, green, _ = np.asarray(overlay.convert("RGB"), dtype=float).reshape(-1, 3).mean(axis=0)
    assert red > green + 60  # P(tampered) = 1 everywhere: the crop turns red
    assert bad.overlay_uri is None and "not a readable PNG" in (bad.note or "")


def _decode(uri: str) -> bytes:
    import base64

    return base64.b64decode(uri.split(",", 1)[1])


def test_uploader_text_stays_text(clip: Path) -> None:
    hostile = '<img src=x onerror="alert(1)"><script>alert(2)</script>'
    record = _verdict(clip, job_id=hostile, metadata={"title": hostile}, detail=hostile)
    document = Document.parse(render_verdict(gather(record, 1, None, MediaAccess())))
    assert not document.by_tag("script")
    assert not [e for e in document.by_tag("img") if "onerror" in e.attrs]
    assert hostile in document.by_id("job-id").content and hostile in document.by_id("verdict-detail").content
    assert "<script>alert(2)</script>" in document.by_id("job-metadata").content
    index = Document.parse(render_index([IndexEntry(1, replace(record, media_uri=f"file:///m/{hostile}"), None, None)],
                                        hostile))  # fmt: skip
    assert len(index.by_tag("script")) == 1  # the page's own sorting script only
    assert not [e for e in index.by_tag("img") if "onerror" in e.attrs]


def test_a_verdict_without_frames_or_engine_still_renders(clip: Path) -> None:
    record = VerdictRecord(
        job_id="j", source="kafka", media_uri="https://example.com/x.mp4", status="error",
        engine=EngineIdentity("gone", 1, "cd" * 32), code="fetch_failed", detail="HTTP 404",
    )  # fmt: skip
    document = Document.parse(render_verdict(gather(record, None, None, MediaAccess())))
    assert document.by_id("verdict-label").content == "error"
    assert "fetch_failed" in document.by_id("verdict-code").content
    assert "the download failed" in document.by_id("verdict-code").content  # the code's meaning
    assert not document.has_id("timeline") and not document.by_class("frame")


def test_timeline_is_a_png_and_names_are_for_people() -> None:
    frames = (FrameScoreRecord(0, 0.1, pts_s=0.0), FrameScoreRecord(5, 0.9, pts_s=0.5))
    png = timeline_png(frames, 0.5, band=(0.4, 0.6), title="t")
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.size == (800, 300)
        assert float(np.asarray(image.convert("L")).std()) > 5
    assert media_name("file:///a/b/clip%20one.mp4") == "clip one.mp4"
    assert media_name("https://host/x/y.jpg?sig=1") == "y.jpg"


def test_upload_signals_are_on_the_page(clip: Path) -> None:
    from deepsift.daemon.records import NearDuplicateRecord

    credentials = {"state": "invalid", "signer": "Cam Co", "claim_generator": "cam/2", "ai_generated": False,
                   "ai_edited": False, "digital_source_types": ["digitalCapture"],
                   "errors": ["assertion.dataHash.mismatch"]}  # fmt: skip
    record = _verdict(clip, reused_from=41, near_duplicates=(NearDuplicateRecord(17, 3, 2, 4),),
                      content_credentials=credentials)  # fmt: skip
    document = Document.parse(render_verdict(gather(record, 42, None, MediaAccess())))
    assert "verdict-41.html" in {a.attrs.get("href") for a in document.by_tag("a")}
    assert "41" in document.by_id("reused-from").content
    assert "2 of 4" in document.by_id("near-duplicates").content
    facts = document.by_id("content-credentials").content
    assert "invalid" in facts and "Cam Co" in facts and "assertion.dataHash.mismatch" in facts
