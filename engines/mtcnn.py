"""MTCNN's three-stage cascade (P-net proposals, R-net refinement, O-net output) over facenet-pytorch's networks.

facenet-pytorch's own ``detect_face`` cuts every candidate box out of its frame and resizes it to the next net's
input (24 or 48 px) with one ``interpolate(mode="area")`` call per box: on a textured 640×360 frame P-net proposes
~200 boxes, and those calls took a third of MTCNN's CPU time. Here the candidates of one frame are resized
together, from an integral image of the frame: ``area`` interpolation is torch's adaptive average pooling, whose
cell ``i`` of ``n`` over ``h`` rows spans rows ``floor(i·h/n)`` to ``ceil((i+1)·h/n)``, so each output cell is four
look-ups in the integral image. Frames are uint8, so the sums are exact integers; the cells match torch's to float
rounding (``tests/unit/engines/test_mtcnn.py`` checks boxes and scores against facenet-pytorch's ``detect``).

Everything else is MTCNN as facenet-pytorch runs it: the same networks and weights, pyramid, thresholds,
non-maximum suppressions, box regression and squaring (its helpers are called, not copied).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from facenet_pytorch.models.utils.detect_face import (
    batched_nms_numpy,
    bbreg,
    fixed_batch_process,
    generateBoundingBox,
    pad,
    rerec,
)
from torch.nn.functional import interpolate
from torchvision.ops.boxes import batched_nms

INT32_SUM_PIXELS = (2**31 - 1) // 255  # a frame with more pixels than this needs 64-bit sums


def detect(mtcnn: Any, frames: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per frame of an N×H×W×3 uint8 batch, MTCNN's boxes (k×4, frame pixels) and their face probabilities (k).

    ``mtcnn`` is a facenet-pytorch ``MTCNN``: its networks, smallest face, thresholds and pyramid factor are used.
    """
    with torch.no_grad():
        frames = frames.to(mtcnn.device)
        boxes, owners = _proposals(frames.permute(0, 3, 1, 2).float(), mtcnn)
        if len(boxes):
            sums = _integral(frames)
            boxes, owners = _refined(sums, boxes, owners, mtcnn.rnet, mtcnn.thresholds[1])
        if len(boxes):
            boxes, owners = _output(sums, boxes, owners, mtcnn.onet, mtcnn.thresholds[2])
    boxes_np, owners_np = boxes.cpu().numpy(), owners.cpu().numpy()
    return [(boxes_np[owners_np == i, :4], boxes_np[owners_np == i, 4]) for i in range(len(frames))]


def _pyramid(height: int, width: int, min_face_size: int, factor: float) -> list[float]:
    """The scales P-net runs at: the smallest face becomes P-net's 12 px window, then shrinks by ``factor`` while
    the short side still holds a window."""
    scale, short = 12.0 / min_face_size, min(height, width) * 12.0 / min_face_size
    scales = []
    while short >= 12:
        scales.append(scale)
        scale, short = scale * factor, short * factor
    return scales


def _proposals(images: torch.Tensor, mtcnn: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """P-net over the pyramid: candidate boxes per frame after suppression within each scale (IoU 0.5) and then
    across scales (0.7), moved by P-net's regression and made square."""
    height, width = images.shape[2:]
    found, owners, picks, offset = [], [], [], 0
    for scale in _pyramid(height, width, mtcnn.min_face_size, mtcnn.factor):
        scaled = interpolate(images, size=(int(height * scale + 1), int(width * scale + 1)), mode="area")
        reg, probs = mtcnn.pnet(_normalised(scaled))
        boxes, image_inds = generateBoundingBox(reg, probs[:, 1], scale, mtcnn.thresholds[0])
        picks.append(batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.5) + offset)
        found.append(boxes)
        owners.append(image_inds)
        offset += len(boxes)
    pick = torch.cat(picks)
    boxes, image_inds = torch.cat(found)[pick], torch.cat(owners)[pick]
    pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
    boxes, image_inds = boxes[pick], image_inds[pick]
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    moved = torch.stack(
        [boxes[:, 0] + boxes[:, 5] * w, boxes[:, 1] + boxes[:, 6] * h, boxes[:, 2] + boxes[:, 7] * w,
         boxes[:, 3] + boxes[:, 8] * h, boxes[:, 4]], dim=1,
    )  # fmt: skip
    return rerec(moved), image_inds


def _refined(
    sums: torch.Tensor, boxes: torch.Tensor, owners: torch.Tensor, rnet: Any, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """R-net on 24 px crops of the candidates: those above ``threshold`` (its score replacing P-net's), suppressed
    (IoU 0.7), moved by R-net's regression and made square."""
    reg, probs = fixed_batch_process(_crops(sums, boxes, owners, 24), rnet)
    keep = probs[:, 1] > threshold
    boxes = torch.cat((boxes[keep, :4], probs[keep, 1:2]), dim=1)
    owners, reg = owners[keep], reg[keep]
    pick = batched_nms(boxes[:, :4], boxes[:, 4], owners, 0.7)
    return rerec(bbreg(boxes[pick], reg[pick])), owners[pick]


def _output(
    sums: torch.Tensor, boxes: torch.Tensor, owners: torch.Tensor, onet: Any, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """O-net on 48 px crops: the faces above ``threshold``, moved by O-net's regression, then suppressed where one
    box covers 70 % of a smaller one (MTCNN's "Min" suppression)."""
    reg, _landmarks, probs = fixed_batch_process(_crops(sums, boxes, owners, 48), onet)
    keep = probs[:, 1] > threshold
    boxes = bbreg(torch.cat((boxes[keep, :4], probs[keep, 1:2]), dim=1), reg[keep])
    owners = owners[keep]
    pick = batched_nms_numpy(boxes[:, :4], boxes[:, 4], owners, 0.7, "Min")
    return boxes[pick], owners[pick]


def _crops(sums: torch.Tensor, boxes: torch.Tensor, owners: torch.Tensor, side: int) -> torch.Tensor:
    """The boxes' pixels (clipped to their frames) area-resized to side × side and normalised as MTCNN's nets take
    them, K×3×side×side. A box wholly outside its frame gives an empty crop: zeros (MTCNN's nets score it low)."""
    height, width = sums.shape[2] - 1, sums.shape[3] - 1
    device = sums.device
    y, ey, x, ex = (torch.as_tensor(v, device=device, dtype=torch.long) for v in pad(boxes, width, height))
    rows, cols = ey - y + 1, ex - x + 1  # the crop is rows y-1 .. ey-1, columns x-1 .. ex-1 (pad is 1-based)
    out = torch.zeros((len(boxes), sums.shape[1], side, side), device=device)
    cell = torch.arange(side, device=device)
    owners = owners.to(device)
    for image in torch.unique(owners).tolist():
        mine = ((owners == image) & (rows > 0) & (cols > 0)).nonzero()[:, 0]
        if len(mine):
            rows_at = _cells(y[mine] - 1, rows[mine], cell)
            cols_at = _cells(x[mine] - 1, cols[mine], cell)
            out[mine] = _area(sums[image], rows_at[..., None], cols_at[:, :, None, :]).permute(1, 0, 2, 3)
    return _normalised(out)


def _normalised(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - 127.5) * 0.0078125


def _integral(frames: torch.Tensor) -> torch.Tensor:
    """N×C×(H+1)×(W+1) running sums of N×H×W×C uint8 frames, exact (numpy's integer cumsum on the CPU: 4× torch's)."""
    n, height, width, channels = frames.shape
    wide = height * width > INT32_SUM_PIXELS
    if frames.device.type == "cpu":
        dtype = np.int64 if wide else np.int32
        sums = np.zeros((n, channels, height + 1, width + 1), dtype=dtype)
        sums[:, :, 1:, 1:] = frames.numpy().transpose(0, 3, 1, 2).cumsum(2, dtype=dtype).cumsum(3, dtype=dtype)
        return torch.from_numpy(sums)
    sums = torch.zeros((n, channels, height + 1, width + 1), dtype=torch.int64, device=frames.device)
    sums[:, :, 1:, 1:] = frames.permute(0, 3, 1, 2).to(torch.int64).cumsum(2).cumsum(3)
    return sums


def _cells(start: torch.Tensor, length: torch.Tensor, cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive average pooling's cells of ``len(cell)`` over spans (``start``, ``length``): first and one-past-last
    index of each, K×n each (torch's ``floor(i·h/n)`` and ``ceil((i+1)·h/n)``)."""
    n = len(cell)
    first = start[:, None] + (cell[None] * length[:, None]) // n
    last = start[:, None] - (-(cell[None] + 1) * length[:, None] // n)
    return torch.stack((first, last))


def _area(sums: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Means of the cells ``rows`` × ``cols`` (each a (first, one-past-last) pair of broadcastable index tensors)
    from running sums whose last two axes are rows and columns."""
    (r0, r1), (c0, c1) = rows, cols
    total = sums[..., r1, c1] - sums[..., r0, c1] - sums[..., r1, c0] + sums[..., r0, c0]
    return (total.double() / ((r1 - r0) * (c1 - c0)).double()).float()
