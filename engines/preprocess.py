"""Pixels in, engine input out — one definition shared by training, export checks and serving.

Everything that shapes pixels is an ``InputContract``: it is written into the engine manifest when an
engine is built and the daemon reads it from there only, so training and serving cannot drift apart.
The maths runs in torch so the same code serves CPU and GPU tensors: the resize filter (``interpolation``, always
antialiased) is torch's on both, and the GPU decoder (``engines.dali``) hands over full-size frames, never resized.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

ResizeMode = Literal["squash", "shorter_center_crop", "longest_pad"]
CropMode = Literal["face", "full"]
Interpolation = Literal["bilinear", "bicubic"]
Rounding = Literal["nearest", "torchvision"]


class InputContract(BaseModel):
    """What an engine expects: size, resize rule, crop mode, normalisation and channel order."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int = Field(gt=0, description="square side in pixels")
    resize_mode: ResizeMode = "squash"
    crop_mode: CropMode = "face"
    face_margin: float = Field(default=0.3, ge=0.0, description="extra side around the face box, as a fraction")
    min_face_confidence: float = Field(default=0.9, ge=0.0, le=1.0)
    mean: tuple[float, float, float] = Field(default=(0.5, 0.5, 0.5), description="in the engine's channel order")
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    color_order: Literal["RGB", "BGR"] = "RGB"
    interpolation: Interpolation = Field(
        default="bilinear",
        description="antialiased resize filter; bicubic is open_clip's for its pretrained towers. Bilinear when "
        "absent: what every engine built before this field resized with",
    )
    rounding: Rounding = Field(
        default="nearest",
        description="how the scaled side and the crop offset are rounded: nearest and floor (absent: every engine "
        "built before this field), or as torchvision's Resize(int) and CenterCrop (truncated side, offset rounded "
        "half to even), which OpenAI's and open_clip's CLIP transforms use",
    )


def resize_pixels(pixels: torch.Tensor, height: int, width: int, interpolation: Interpolation) -> torch.Tensor:
    """The contract's resize op (antialiased, corners not aligned) on one CHW image or an NCHW batch."""
    batch = pixels if pixels.ndim == 4 else pixels[None]
    out = F.interpolate(batch, size=(height, width), mode=interpolation, antialias=True, align_corners=False)
    return out if pixels.ndim == 4 else out[0]


def _scaled_sides(h: int, w: int, size: int, mode: ResizeMode, rounding: Rounding) -> tuple[int, int]:
    """The image's sides once its shorter (``shorter_center_crop``) or longer side is ``size``."""
    reference = min(h, w) if mode == "shorter_center_crop" else max(h, w)
    if rounding == "torchvision":  # Resize(int): the reference side exact, the other truncated
        return tuple(size if side == reference else max(1, int(size * side / reference)) for side in (h, w))
    scale = size / reference
    return max(1, round(h * scale)), max(1, round(w * scale))


def fit_to_square(
    chw: torch.Tensor,
    size: int,
    mode: ResizeMode,
    interpolation: Interpolation = "bilinear",
    rounding: Rounding = "nearest",
) -> torch.Tensor:
    """Resize a float CHW image to ``size``×``size`` by the contract's rule, with the contract's filter.

    ``squash`` ignores the aspect ratio; ``shorter_center_crop`` scales the shorter side to ``size``
    and crops the centre; ``longest_pad`` scales the longer side to ``size`` and pads the rest with
    zeros (black), keeping the image centred. Bicubic overshoots past [0, 1]; ``preprocess_image`` clamps, as a
    uint8 PIL resize does. Masks keep the bilinear default (they are thresholded at 0.5 after it) and the image's
    ``rounding``, so they stay on its pixels.
    """
    _, h, w = chw.shape
    if mode == "squash":
        return resize_pixels(chw, size, size, interpolation)
    nh, nw = _scaled_sides(h, w, size, mode, rounding)
    resized = resize_pixels(chw, nh, nw, interpolation)
    if mode == "shorter_center_crop":
        if rounding == "torchvision":  # CenterCrop: int(round(x / 2)), Python's round (half to even)
            top, left = round((nh - size) / 2.0), round((nw - size) / 2.0)
        else:
            top, left = (nh - size) // 2, (nw - size) // 2
        return resized[:, top : top + size, left : left + size]
    pad_top, pad_left = (size - nh) // 2, (size - nw) // 2
    return F.pad(resized, (pad_left, size - nw - pad_left, pad_top, size - nh - pad_top))


def resize_image(rgb: np.ndarray | torch.Tensor, contract: InputContract) -> torch.Tensor:
    """One RGB uint8 HWC image → float32 RGB CHW in [0, 1] at the contract's size (the first half of
    ``preprocess_image``; training augments between the halves where a recipe says so)."""
    # np.require copies only reversed/strided views (e.g. bgr[..., ::-1]) and read-only arrays (PIL's)
    hwc = torch.as_tensor(np.require(rgb, requirements=["C", "W"]) if isinstance(rgb, np.ndarray) else rgb)
    if hwc.ndim != 3 or hwc.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 RGB image, got shape {tuple(hwc.shape)}")
    chw = hwc.permute(2, 0, 1).float().div(255.0)  # not div_: .float() of a float32 input is the caller's memory
    resized = fit_to_square(chw, contract.size, contract.resize_mode, contract.interpolation, contract.rounding)
    return resized.clamp_(0.0, 1.0)


def normalize_image(chw: torch.Tensor, contract: InputContract) -> torch.Tensor:
    """Float RGB CHW in [0, 1] → the engine's channel order, less the contract's mean, over its std."""
    if contract.color_order == "BGR":
        chw = chw.flip(0)
    mean = torch.tensor(contract.mean, dtype=chw.dtype, device=chw.device)[:, None, None]
    std = torch.tensor(contract.std, dtype=chw.dtype, device=chw.device)[:, None, None]
    return (chw - mean) / std


def preprocess_image(rgb: np.ndarray | torch.Tensor, contract: InputContract) -> torch.Tensor:
    """One RGB uint8 HWC image → normalised float32 CHW tensor of the contract's size."""
    return normalize_image(resize_image(rgb, contract), contract)


def preprocess_batch(images: Sequence[np.ndarray | torch.Tensor], contract: InputContract) -> np.ndarray | torch.Tensor:
    """A batch of RGB images of any sizes → contiguous float32 NCHW batch for an engine.

    Host images (numpy arrays, CPU tensors) give a numpy array; images on a device (CUDA tensors from the GPU
    decoder) give a tensor on that device, so the engine takes them without a trip through host memory.
    The maths is ``preprocess_image``'s either way.
    """
    if not images:
        return np.zeros((0, 3, contract.size, contract.size), dtype=np.float32)
    with torch.no_grad():  # not inference_mode: a device batch leaves this function as an ordinary tensor
        batch = torch.stack([preprocess_image(img, contract) for img in images])
    if on_device(images[0]):
        return batch.contiguous()
    return np.ascontiguousarray(batch.numpy(), dtype=np.float32)


def on_device(image: np.ndarray | torch.Tensor) -> bool:
    """Whether an image lives on an accelerator (a non-CPU torch tensor) rather than in host memory."""
    return isinstance(image, torch.Tensor) and image.device.type != "cpu"
