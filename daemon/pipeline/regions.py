"""The regions stage: what of the decoded frames the engine scores — whole frames, or square face crops found by
``engines.faces.crop_faces``, the function ``trainer prepare`` crops its training data with, so training and
serving see the same pixels."""

from __future__ import annotations

from typing import Any

from deepsift.daemon.pipeline.records import Region
from deepsift.engines.errors import MediaError
from deepsift.engines.faces import DETECT_MAX_SIDE, FaceBox, FaceDetector, crop_faces, min_face_size, scale_box
from deepsift.engines.manifest import EngineManifest
from deepsift.engines.media import DecodedMedia, MediaFacts


def find_regions(
    decoded: DecodedMedia,
    manifest: EngineManifest,
    detector: FaceDetector | None,
    detect_max_side: int = DETECT_MAX_SIDE,
) -> tuple[list[Region], list[Any]]:
    """Regions and their RGB pixels: whole frames, or square face crops — as the manifest says.

    Faces are found by ``engines.faces.crop_faces`` (the trainer's code) on copies at most ``detect_max_side``
    long and cut from the decoded frames; region boxes are in the media's own pixels (``MediaFacts`` width and
    height), whatever size the frames were decoded at. Pixels stay where the decoder put them: numpy arrays from
    PyAV, CUDA tensors from DALI (crops included). Frames too small to hold a face the detector can find are
    ``too_small``.
    """
    frames = decoded.frames
    contract = manifest.input
    if contract.crop_mode == "full":
        return [Region(f.index, f.pts_s) for f in frames], [f.rgb for f in frames]
    if detector is None:
        raise RuntimeError("this engine crops faces but no face detector was given")
    _check_face_room(decoded, min_face_size(detector))
    frame_by_index = {f.index: f for f in frames}
    regions, crops = [], []
    for crop in crop_faces(frames, detector, contract.face_margin, detect_max_side):
        frame = frame_by_index[crop.frame_index]
        box = _in_media_pixels(crop.box, frame.rgb.shape, decoded.facts)
        regions.append(Region(frame.index, frame.pts_s, crop.face_index, crop.track_id, box))
        crops.append(crop.rgb)
    return regions, crops


def _check_face_room(decoded: DecodedMedia, smallest_face: int) -> None:
    height, width = (min(f.rgb.shape[i] for f in decoded.frames) for i in (0, 1))
    if min(height, width) < smallest_face:
        raise MediaError(
            "too_small",
            f"{decoded.facts.width}x{decoded.facts.height} media (frames {width}x{height}) is smaller than the "
            f"face detector's smallest face ({smallest_face} px)",
        )


def _in_media_pixels(box: FaceBox, frame_shape: tuple[int, ...], facts: MediaFacts) -> FaceBox:
    """A box in a decoded frame's pixels, in the media's own: they differ when the frame budget shrank the frame."""
    return scale_box(box, facts.width / frame_shape[1], facts.height / frame_shape[0])
