"""Faces in sampled frames: MTCNN detection, tracks across frames (``engines.tracking``), and square crops.

The trainer's preparation and the daemon both crop faces through this module, as the SD²
preprocessing does, so a detector sees faces framed the same way in training and in service.
MTCNN's weights ship inside the ``facenet-pytorch`` wheel; nothing is downloaded.

Detection runs on a copy of each frame whose long side is at most ``detect_max_side`` (640 by default;
``detect_faces``): MTCNN's time and working set grow with the pixels it searches (about 50 bytes per pixel on
CPU), so a 1080p frame would cost it 9× its 640×360 copy. Boxes are mapped back to the frame's own pixels and
crops are cut from the frame itself, at its full (decoded) resolution. The smallest face searched for is
therefore ``min_face_size`` (20) pixels in the detection copy: 20 px in frames up to 640 on the long side, and
1/32 of the long side above that (60 px in a 1920×1080 frame, 120 px in 4K). Boxes of faces from about 33 px in
the copy (100 px in 1080p) match full-resolution detection at IoU ≥ 0.9; smaller ones are found with looser
boxes (IoU ≈ 0.8 at 20–30 px in the copy). (MTCNN's image pyramid starts
at that size; it still catches some faces down to about half of it, none much smaller.) Frames whose short
side is under ``min_face_size`` cannot be searched at all; MTCNN is not run on them (its pyramid would be
empty and it would fail), and the daemon answers such media ``too_small``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from deepsift.engines.budgets import MAX_DETECT_BATCH_PIXELS, MediaBudget, detection_size
from deepsift.engines.tracking import assign_tracks, unit_look

if TYPE_CHECKING:
    import torch

    from deepsift.engines.media import SampledFrame

    RGBImage = np.ndarray | torch.Tensor  # H×W×3 uint8 RGB, in host memory or on a device

APPEARANCE_SIDE = 16  # a face's appearance for tracking: its box averaged down to 16×16 colour cells
DETECT_MAX_SIDE = MediaBudget().detect_max_side  # the daemon's default (setting ``detect_max_side``)
MIN_FACE_SIZE = 20  # MTCNN's smallest face, in detection pixels (SD² and facenet-pytorch's default)
# MTCNN's passes are hundreds of small ops per frame (a crop and resize per candidate box) that torch's intra-op
# threads barely speed up, while their spin-waits cost a busy CPU dearly: on 2 cores shared with decoding and the
# engine, 2 threads took 3× the CPU time of 1 per frame. The daemon detects in parallel on its prepare workers.
MTCNN_THREADS = 1
# Faces kept per frame, the most confident: bounds a crowd's crops and engine input (32 frames × 16 faces of a
# 224 px contract are 300 MB of float32 pixels).
MAX_FACES_PER_FRAME = 16


@dataclass(frozen=True)
class FaceBox:
    """A face in frame pixels; it may reach past the frame's edges."""

    x0: float
    y0: float
    x1: float
    y1: float
    confidence: float

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0


@dataclass(frozen=True)
class FaceCrop:
    frame_index: int
    face_index: int
    track_id: int
    box: FaceBox
    rgb: np.ndarray | torch.Tensor


def _is_tensor(image: object) -> bool:
    """A torch tensor, told apart without importing torch (this module loads it only for MTCNN)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(image, torch.Tensor)


class FaceDetector(Protocol):
    """Faces per frame in that frame's pixels. A detector may say its smallest face (``min_face_size``, pixels);
    ``detect_faces`` then keeps the detection copies at least that high and wide."""

    def detect(self, frames: Sequence[RGBImage]) -> list[list[FaceBox]]: ...


class MtcnnFaceDetector:
    """MTCNN over batches of RGB frames; the network is built once and reused for every call.

    Frames may be numpy arrays or torch tensors; with ``device="cuda"`` and CUDA tensors from the GPU decoder the
    whole detection runs on the GPU (facenet-pytorch moves other frames to the network's device itself).
    """

    max_batch = 16  # frames per forward pass
    max_batch_pixels = MAX_DETECT_BATCH_PIXELS  # and pixels per pass: MTCNN holds ~50 bytes per pixel on CPU

    def __init__(
        self,
        min_confidence: float = 0.9,
        device: str = "cpu",
        min_face_size: int = MIN_FACE_SIZE,
        threads: int | None = MTCNN_THREADS,
    ) -> None:
        self.min_confidence = min_confidence
        self.min_face_size = min_face_size
        self.threads = threads  # torch intra-op threads of the calling thread while it detects; None: leave as is
        self._mtcnn = _build_mtcnn(device, min_face_size)

    def detect(self, frames: Sequence[RGBImage]) -> list[list[FaceBox]]:
        """Per frame, the faces above ``min_confidence``, most confident first.

        MTCNN batches only frames of one size, so frames are grouped by shape and batched per group. A frame
        smaller than ``min_face_size`` on its short side has no face MTCNN can find: it gets none, unsearched.
        """
        from deepsift.engines import mtcnn  # torch and facenet-pytorch, loaded with the detector

        found: list[list[FaceBox]] = [[] for _ in frames]
        for shape, indices in _indices_by_shape(frames).items():
            height, width = shape[:2]
            if min(height, width) < self.min_face_size:
                continue
            per_pass = max(1, min(self.max_batch, self.max_batch_pixels // (height * width)))
            for start in range(0, len(indices), per_pass):
                chunk = indices[start : start + per_pass]
                with _torch_threads(self.threads):
                    per_frame = mtcnn.detect(self._mtcnn, _batch([frames[i] for i in chunk]))
                for i, (frame_boxes, frame_probs) in zip(chunk, per_frame, strict=True):
                    found[i] = self._kept(frame_boxes, frame_probs)
        return found

    def _kept(self, boxes: np.ndarray, probs: np.ndarray) -> list[FaceBox]:
        """MTCNN's boxes as FaceBoxes above the confidence floor, most confident first."""
        faces = [FaceBox(*(float(v) for v in box), confidence=float(p)) for box, p in zip(boxes, probs, strict=True)]
        return sorted((f for f in faces if f.confidence > self.min_confidence), key=lambda f: -f.confidence)


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads in the calling thread, then restore its count.

    torch keeps the count per thread (OpenMP's) once a thread has run an op; other threads keep theirs."""
    torch = sys.modules.get("torch")  # loaded by _build_mtcnn
    before = torch.get_num_threads() if torch is not None else threads
    if threads is None or threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _build_mtcnn(device: str, min_face_size: int) -> Any:
    """facenet-pytorch's MTCNN with its packaged P/R/O-net weights, imported only when needed; its cascade is run
    by ``engines.mtcnn``."""
    from facenet_pytorch import MTCNN

    mtcnn = MTCNN(
        min_face_size=min_face_size,
        keep_all=True,
        post_process=False,
        select_largest=False,
        device=device,
    )
    if device == "cpu":  # torch's CPU convolutions and poolings on these few channels: 2.4× faster channels-last
        for net in (mtcnn.pnet, mtcnn.rnet, mtcnn.onet):
            net.register_forward_pre_hook(_channels_last)
    return mtcnn.eval()


def _channels_last(net: Any, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
    """An MTCNN net's input batch laid out channels-last (facenet-pytorch stacks its candidate crops NCHW)."""
    torch = sys.modules["torch"]
    return (inputs[0].contiguous(memory_format=torch.channels_last), *inputs[1:])


def _indices_by_shape(frames: Sequence[RGBImage]) -> dict[tuple[object, ...], list[int]]:
    """Frame positions grouped by shape and device: MTCNN batches frames of one size on one device."""
    groups: dict[tuple[object, ...], list[int]] = {}
    for i, frame in enumerate(frames):
        uint8 = sys.modules["torch"].uint8 if _is_tensor(frame) else np.uint8
        if frame.dtype != uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frame {i} must be H x W x 3 uint8 RGB, got {frame.dtype} {tuple(frame.shape)}")
        groups.setdefault((*frame.shape, str(getattr(frame, "device", "cpu"))), []).append(i)
    return groups


def _batch(frames: list[RGBImage]) -> torch.Tensor:
    """Frames of one shape as one N×H×W×3 tensor (host arrays stacked once, without a further copy)."""
    torch = sys.modules["torch"]
    return torch.stack(frames) if _is_tensor(frames[0]) else torch.from_numpy(np.stack(frames))


def square_crop(rgb: RGBImage, box: FaceBox, margin: float) -> RGBImage:
    """A square around the face, ``max(w, h) * (1 + margin)`` on a side, centred on the box.

    Parts outside the frame are black rather than shifting the square inwards, so the face stays
    centred and its scale stays the same wherever it is in the frame.
    """
    side = max(1, round(max(box.width, box.height) * (1 + margin)))
    left = round((box.x0 + box.x1) / 2 - side / 2)
    top = round((box.y0 + box.y1) / 2 - side / 2)
    if _is_tensor(rgb):  # stays on the frame's device
        crop = rgb.new_zeros((side, side, rgb.shape[2]))
    else:
        crop = np.zeros((side, side, rgb.shape[2]), dtype=rgb.dtype)
    height, width = rgb.shape[:2]
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + side, width), min(top + side, height)
    if x1 > x0 and y1 > y0:
        crop[y0 - top : y1 - top, x0 - left : x1 - left] = rgb[y0:y1, x0:x1]
    return crop


def iou(a: FaceBox, b: FaceBox) -> float:
    """Intersection over union of two boxes; 0 when they do not overlap."""
    inter_w = min(a.x1, b.x1) - max(a.x0, b.x0)
    inter_h = min(a.y1, b.y1) - max(a.y0, b.y0)
    if inter_w <= 0 or inter_h <= 0:
        return 0.0
    inter = inter_w * inter_h
    return inter / (a.width * a.height + b.width * b.height - inter)


def appearance(rgb: RGBImage, box: FaceBox) -> np.ndarray | None:
    """What the face looks like, for tracking (``engines.tracking``): the pixels inside its box averaged down to
    ``APPEARANCE_SIDE``² colour cells, less their mean, at unit length. The cells are torch's
    ``adaptive_avg_pool2d`` cells on either side, pooled on a tensor's device (768 floats then cross to the host).
    None when the box holds too few of the frame's pixels or they are flat."""
    height, width = rgb.shape[:2]
    x0, y0 = max(0, round(box.x0)), max(0, round(box.y0))
    x1, y1 = min(width, round(box.x1)), min(height, round(box.y1))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    face = rgb[y0:y1, x0:x1]
    if _is_tensor(face):
        import torch.nn.functional as F

        cells = F.adaptive_avg_pool2d(face.permute(2, 0, 1)[None].float(), APPEARANCE_SIDE)[0].permute(1, 2, 0)
        return unit_look(cells.cpu().numpy())
    return unit_look(_pooled(np.asarray(face, np.float64), APPEARANCE_SIDE))


def _pooled(pixels: np.ndarray, side: int) -> np.ndarray:
    """Means over ``side``² cells, the cells of torch's adaptive average pooling, from an integral image."""
    height, width = pixels.shape[:2]
    integral = np.zeros((height + 1, width + 1, pixels.shape[2]))
    integral[1:, 1:] = pixels.cumsum(axis=0).cumsum(axis=1)
    i = np.arange(side)
    r0, r1 = (i * height) // side, -(-(i + 1) * height // side)
    c0, c1 = (i * width) // side, -(-(i + 1) * width // side)
    sums = integral[r1][:, c1] - integral[r0][:, c1] - integral[r1][:, c0] + integral[r0][:, c0]
    return sums / ((r1 - r0)[:, None] * (c1 - c0)[None, :])[..., None]


def min_face_size(detector: FaceDetector) -> int:
    """The smallest face ``detector`` finds, in the pixels it searches (1 when it does not say)."""
    return int(getattr(detector, "min_face_size", 1))


def detect_faces(
    detector: FaceDetector, frames: Sequence[RGBImage], max_side: int = DETECT_MAX_SIDE
) -> list[list[FaceBox]]:
    """Faces per frame, searched on copies whose long side is at most ``max_side``, boxes in the frames' pixels.

    A copy keeps the detector's smallest face on its short side where the frame has it, so very wide frames are
    not squeezed below what the detector can search. Frames within ``max_side`` are searched as they are. A frame
    keeps its ``MAX_FACES_PER_FRAME`` most confident faces.
    """
    smallest = min_face_size(detector)
    copies, scales = [], []
    for rgb in frames:
        height, width = rgb.shape[:2]
        size = detection_size(width, height, max_side, smallest)
        copies.append(rgb if size == (width, height) else _resized(rgb, *size))
        scales.append((width / size[0], height / size[1]))
    found = detector.detect(copies)
    return [
        [scale_box(box, *scale) for box in _most_confident(boxes)] for boxes, scale in zip(found, scales, strict=True)
    ]


def _most_confident(boxes: list[FaceBox]) -> list[FaceBox]:
    if len(boxes) <= MAX_FACES_PER_FRAME:
        return boxes
    return sorted(boxes, key=lambda box: -box.confidence)[:MAX_FACES_PER_FRAME]


def _resized(rgb: RGBImage, width: int, height: int) -> RGBImage:
    """A smaller copy for detection, antialiased bilinear, by torch: on the tensor's device, and for host arrays on
    their uint8 pixels as they lie (the same pixels as Pillow's ``resize``, 4× faster than it at 1080p)."""
    import torch
    import torch.nn.functional as F

    if not _is_tensor(rgb):
        host = np.ascontiguousarray(rgb)
        host = host if host.flags.writeable else host.copy()  # torch.from_numpy warns of read-only arrays
        chw = torch.from_numpy(host).permute(2, 0, 1)[None]  # channels-last uint8: torch's fast path
        small = F.interpolate(chw, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
        return np.ascontiguousarray(small[0].permute(1, 2, 0).numpy())
    chw = rgb.permute(2, 0, 1)[None].float()
    small = F.interpolate(chw, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return small[0].permute(1, 2, 0).round_().clamp_(0, 255).to(rgb.dtype).contiguous()


def scale_box(box: FaceBox, sx: float, sy: float) -> FaceBox:
    """The box with its x coordinates multiplied by ``sx`` and its y coordinates by ``sy``."""
    if sx == sy == 1.0:
        return box
    return FaceBox(box.x0 * sx, box.y0 * sy, box.x1 * sx, box.y1 * sy, box.confidence)


def crop_faces(
    frames: Sequence[SampledFrame], detector: FaceDetector, margin: float, max_side: int = DETECT_MAX_SIDE
) -> list[FaceCrop]:
    """Detect faces in every sampled frame (on copies at most ``max_side`` long), link them into tracks by where they
    head and how they look (``engines.tracking``, over the frames' timestamps), and cut a square crop of each from
    the frame itself."""
    boxes_per_frame = detect_faces(detector, [frame.rgb for frame in frames], max_side)
    looks = [[appearance(f.rgb, box) for box in boxes] for f, boxes in zip(frames, boxes_per_frame, strict=True)]
    times = [frame.pts_s for frame in frames]
    tracks = assign_tracks(boxes_per_frame, None if None in times else times, looks)  # type: ignore[arg-type]
    return [
        FaceCrop(frame.index, face_index, track_id, box, square_crop(frame.rgb, box, margin))
        for frame, boxes, track_ids in zip(frames, boxes_per_frame, tracks, strict=True)
        for face_index, (box, track_id) in enumerate(zip(boxes, track_ids, strict=True))
    ]
