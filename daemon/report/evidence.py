"""What a verdict page shows, gathered from the stored verdict, its engine's manifest and (when it is still there)
the media: the most suspicious frames with every face box, the crops, mask overlays, the timeline, and the tables
SQL holds. Everything here is plain data for the templates; nothing is HTML yet."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from deepsift.daemon.records import FrameScoreRecord, MaskRecord, TrackSummaryRecord, VerdictRecord
from deepsift.daemon.report import images
from deepsift.daemon.report.media import MediaAccess, ReportFrames, read_frames
from deepsift.daemon.report.plots import timeline_png
from deepsift.engines.codes import CODES, VerdictCode
from deepsift.engines.manifest import EngineManifest

TOP_FRAMES = 4  # most suspicious frames shown with their boxes and crops


@dataclass(frozen=True)
class BoxView:
    """One face (or region) laid over its frame: edges in percent of the frame, so it scales with the picture."""

    left: float
    top: float
    width: float
    height: float
    track_id: int | None
    face_index: int | None
    p_fake: float
    confidence: float | None
    over_threshold: bool
    crop_uri: str | None


@dataclass(frozen=True)
class FrameView:
    index: int
    pts_s: float | None
    p_fake: float | None  # the highest score of the frame's regions; None for a frame nothing was scored in
    image_uri: str | None  # None when the media could not be re-read: the boxes are drawn on a blank frame
    aspect: float  # width / height, for the blank frame
    boxes: tuple[BoxView, ...]


@dataclass(frozen=True)
class MaskView:
    frame_index: int
    track_id: int | None
    size: str
    overlay_uri: str | None
    mask_uri: str | None
    note: str | None


@dataclass(frozen=True)
class Evidence:
    """Everything one verdict page shows."""

    verdict_id: int | None
    record: VerdictRecord
    manifest: EngineManifest | None
    code_meaning: str | None
    timeline_uri: str | None
    frames: tuple[FrameView, ...]
    masks: tuple[MaskView, ...]
    tracks: tuple[TrackSummaryRecord, ...]
    regions: tuple[FrameScoreRecord, ...]
    media_note: str | None  # why frames are not shown, when they are not
    thumbnail_uri: str | None
    other_verdict_ids: tuple[int, ...] = ()

    @property
    def face_mode(self) -> bool:
        return any(r.box is not None for r in self.regions)

    @property
    def band(self) -> tuple[float, float] | None:
        """The uncertain band ``(low, high)`` of the verdict's engine, when its manifest has one."""
        return _band(self.manifest)


def _band(manifest: EngineManifest | None) -> tuple[float, float] | None:
    band = None if manifest is None else manifest.uncertain_band
    return None if band is None else (band.low, band.high)


def gather(
    record: VerdictRecord,
    verdict_id: int | None,
    manifest: EngineManifest | None,
    access: MediaAccess,
    top_frames: int = TOP_FRAMES,
) -> Evidence:
    """The page's contents: frames are re-read (``report.media``) only for the ``top_frames`` shown and the masks."""
    by_frame: dict[int, list[FrameScoreRecord]] = defaultdict(list)
    for region in record.frames:
        by_frame[region.frame_index].append(region)
    shown = sorted(by_frame, key=lambda i: (-max(r.p_fake for r in by_frame[i]), i))[:top_frames]
    if shown:
        pictures = read_frames(record, {*shown, *(m.frame_index for m in record.masks)}, access)
    elif record.status == "abstained":  # nothing scored (no face): show what was sampled
        pictures = read_frames(record, None, access, first=top_frames)
        shown = sorted(pictures.frames)
    else:
        pictures = ReportFrames(note="the verdict holds no frames")
    frames = tuple(_frame_view(record, index, by_frame.get(index, []), pictures) for index in shown)
    timeline = None
    if record.frames:
        title = f"{record.engine.name} v{record.engine.version}: P(fake) per sampled frame"
        timeline = images.png_data_uri(timeline_png(record.frames, record.threshold, _band(manifest), title))
    thumbnail = None
    if shown and shown[0] in pictures.frames:
        thumbnail = images.data_uri(images.fitted(pictures.frames[shown[0]], images.THUMBNAIL_MAX_SIDE))
    return Evidence(
        verdict_id=verdict_id,
        record=record,
        manifest=manifest,
        code_meaning=_meaning(record.code),
        timeline_uri=timeline,
        frames=frames,
        masks=tuple(_mask_view(record, mask, by_frame.get(mask.frame_index, []), pictures) for mask in record.masks),
        tracks=tuple(sorted(record.tracks, key=lambda t: (-t.p_fake, t.track_id))),
        regions=record.frames,
        media_note=pictures.note,
        thumbnail_uri=thumbnail,
    )


def _meaning(code: str | None) -> str | None:
    if code is None:
        return None
    try:
        return CODES[VerdictCode(code)].meaning
    except ValueError:
        return None


def _media_size(record: VerdictRecord, pictures: ReportFrames) -> tuple[int, int] | None:
    if record.width and record.height:
        return record.width, record.height
    for rgb in pictures.frames.values():  # an older row without media facts: the decoded frame's size
        return rgb.shape[1], rgb.shape[0]
    return None


def _frame_view(
    record: VerdictRecord, index: int, regions: list[FrameScoreRecord], pictures: ReportFrames
) -> FrameView:
    size = _media_size(record, pictures)
    rgb = pictures.frames.get(index)
    boxes = []
    for region in sorted(regions, key=lambda r: (r.face_index is None, r.face_index or 0)):
        if region.box is None or size is None:
            continue
        x0, y0, x1, y1 = region.box
        width, height = size
        boxes.append(
            BoxView(
                left=100.0 * x0 / width,
                top=100.0 * y0 / height,
                width=100.0 * (x1 - x0) / width,
                height=100.0 * (y1 - y0) / height,
                track_id=region.track_id,
                face_index=region.face_index,
                p_fake=region.p_fake,
                confidence=region.face_confidence,
                over_threshold=record.threshold is not None and region.p_fake >= record.threshold,
                crop_uri=_crop_uri(rgb, region.box, size),
            )
        )
    return FrameView(
        index=index,
        pts_s=regions[0].pts_s if regions else None,
        p_fake=max((r.p_fake for r in regions), default=None),
        image_uri=None if rgb is None else images.data_uri(images.fitted(rgb, images.FRAME_MAX_SIDE)),
        aspect=(size[0] / size[1]) if size else 16 / 9,
        boxes=tuple(boxes),
    )


def _crop_uri(rgb: np.ndarray | None, box: tuple[float, float, float, float], size: tuple[int, int]) -> str | None:
    if rgb is None:
        return None
    picture = images.crop(rgb, box, size)
    return None if picture is None else images.data_uri(picture)


def _mask_view(
    record: VerdictRecord, mask: MaskRecord, regions: list[FrameScoreRecord], pictures: ReportFrames
) -> MaskView:
    """The mask over what the engine saw: the face crop of its track in that frame, or the whole frame."""
    grey = images.read_mask(mask.png)
    size = f"{mask.width}x{mask.height}"
    if grey is None:
        return MaskView(mask.frame_index, mask.track_id, size, None, None, "the stored mask is not a readable PNG")
    rgb = pictures.frames.get(mask.frame_index)
    base = None
    media_size = _media_size(record, pictures)
    if rgb is not None:
        region = next((r for r in regions if r.box is not None and r.track_id == mask.track_id), None)
        if region is not None and region.box is not None and media_size is not None:
            base = images.crop(rgb, region.box, media_size, side=max(mask.width, images.CROP_SIDE))
        elif region is None:
            base = images.fitted(rgb, images.FRAME_MAX_SIDE)
    note = None if base is not None else "shown on grey: the frame it was made for could not be re-read"
    return MaskView(
        mask.frame_index,
        mask.track_id,
        size,
        images.data_uri(images.overlay(base, grey)),
        images.png_data_uri(mask.png),
        note,
    )
