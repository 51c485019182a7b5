"""``trainer prepare``: media in a manifest → the crops an engine sees, cut by the daemon's own code.

Videos are decoded into evenly spaced frames (32 by default, as SD² Appendix A.3) by the ``pyav`` entry of
``engines.decoders.DECODERS``, the daemon's CPU decoder; faces are found, tracked and cut square with the
contract's margin by ``engines.faces`` — the same functions the daemon calls — so a detector trains on the pixels
it will be served. Images are one-frame media. Media without a face above the contract's confidence are left out
and counted, as the daemon abstains on them.

Datasets whose images are face crops already (seed 001's DFWild-Cup, DeepfakeBench's cropped frames) are prepared
with ``precropped``: each image, or each sampled frame, is kept whole as the face crop and no face is searched for,
so nothing is cropped twice and no tight crop is dropped for a face MTCNN cannot find in it. The recipe keeps its
``face`` contract: served media are cropped once, by the daemon, with the contract's margin.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from deepsift.engines.decoders import DECODERS, DecoderOptions
from deepsift.engines.errors import MediaError
from deepsift.engines.faces import FaceDetector, MtcnnFaceDetector, crop_faces, square_crop
from deepsift.engines.preprocess import InputContract
from deepsift.trainer.data import ManifestRow, read_manifest, write_manifest


@dataclass(frozen=True)
class PrepareSummary:
    manifest: Path
    media: int
    crops: int
    without_face: int
    failed: int


def _save(rgb: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def _mask_crop(root: Path, row: ManifestRow, box: object, margin: float) -> np.ndarray | None:
    if not row.mask_path:
        return None
    mask = np.asarray(Image.open(root / row.mask_path).convert("L"))[..., None]
    return square_crop(mask, box, margin)[..., 0]  # type: ignore[arg-type]


def prepare(
    manifest: Path,
    out: Path,
    contract: InputContract,
    frames: int = 32,
    detector: FaceDetector | None = None,
    log: Callable[[str], None] = print,
    precropped: bool = False,
) -> PrepareSummary:
    """Write crops (face mode) or sampled frames (full mode, or ``precropped`` face crops) of every row, and
    ``out/manifest.jsonl``."""
    root, rows_out = Path(manifest).parent, []
    find_faces = contract.crop_mode == "face" and not precropped
    if find_faces:
        detector = detector or MtcnnFaceDetector(min_confidence=contract.min_face_confidence)
    rows = read_manifest(manifest)
    decode = DECODERS.get("pyav")(DecoderOptions())
    without_face = failed = 0
    for n, row in enumerate(rows):
        try:
            media = decode(root / row.path, frames)
        except MediaError as e:
            log(f"skipped {row.path}: {e}")
            failed += 1
            continue
        video_id = row.video_id or Path(row.path).with_suffix("").as_posix()
        stem = f"{row.split}/{n:06d}"
        if find_faces:
            crops = crop_faces(media.frames, detector, contract.face_margin)  # type: ignore[arg-type]
            without_face += not crops
            items = [
                (c.frame_index, c.track_id, c.rgb, _mask_crop(root, row, c.box, contract.face_margin)) for c in crops
            ]
        else:
            mask = np.asarray(Image.open(root / row.mask_path).convert("L")) if row.mask_path else None
            items = [(f.index, 0, f.rgb, mask) for f in media.frames]
        for frame_index, track_id, rgb, mask in items:
            name = f"{stem}_f{frame_index:05d}_t{track_id}"
            _save(rgb, out / f"{name}.png")
            mask_path = ""
            if mask is not None:
                _save(mask, out / f"{name}_mask.png")
                mask_path = f"{name}_mask.png"
            rows_out.append(row.model_copy(update={
                "path": f"{name}.png", "mask_path": mask_path, "video_id": video_id,
                "frame_index": frame_index, "track_id": track_id,
            }))  # fmt: skip
    path = write_manifest(rows_out, Path(out) / "manifest.jsonl")
    return PrepareSummary(path, len(rows), len(rows_out), without_face, failed)
