"""Perceptual hashes of decoded frames, to link re-encoded, resized or lightly edited copies of media seen before.

Each frame gets imagehash's 64-bit DCT hash (pHash, ``imagehash.phash``): a re-encode or a resize moves a few
of its bits, unrelated pictures differ in about half of them. Frames with almost no structure (black, flat
colour) are not hashed: they all hash alike and would link every video that fades to black.

Look-ups use multi-index hashing: a hash is stored with its four 16-bit chunks in indexed columns; two hashes
within Hamming distance ``d`` agree to within ``d // 4`` bits on at least one chunk (pigeonhole), so the
candidates are the rows whose chunk equals one of the chunk's neighbours within that radius — index look-ups,
exact after a Hamming check, never a scan of every row.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cache
from itertools import combinations
from typing import Any

import numpy as np
from PIL import Image

HASH_BITS = 64
CHUNK_BITS = 16
N_CHUNKS = HASH_BITS // CHUNK_BITS
FLAT_STD = 4.0  # grey-level standard deviation (0-255) under which a frame carries too little to hash
HASH_INPUT_SIDE = 256  # frames are shrunk to this before hashing (pHash itself works on 32x32)


def phash(rgb: Any) -> int | None:
    """The unsigned 64-bit pHash of an RGB frame (numpy HxWx3, or a CUDA/CPU tensor); None for a flat frame."""
    import imagehash

    grey = _grey(rgb)
    if float(np.asarray(grey, dtype=np.float32).std()) < FLAT_STD:
        return None
    return int(str(imagehash.phash(grey)), 16)


def frame_hashes(frames: Iterable[Any]) -> list[tuple[int, int]]:
    """(frame index, pHash) of each ``SampledFrame`` that is not flat."""
    hashed = ((frame.index, phash(frame.rgb)) for frame in frames)
    return [(index, value) for index, value in hashed if value is not None]


def _grey(rgb: Any) -> Image.Image:
    if not isinstance(rgb, np.ndarray):  # a torch tensor (DALI frames stay on the GPU): shrink there, then copy
        import torch
        import torch.nn.functional as F

        chw = rgb.permute(2, 0, 1)[None].float()
        scale = HASH_INPUT_SIDE / max(chw.shape[-2:])
        if scale < 1:
            chw = F.interpolate(chw, scale_factor=scale, mode="area")
        rgb = chw[0].permute(1, 2, 0).clamp(0, 255).to("cpu", dtype=torch.uint8).numpy()
    image = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    image.thumbnail((HASH_INPUT_SIDE, HASH_INPUT_SIDE), Image.Resampling.BILINEAR)
    return image.convert("L")


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def chunks(value: int) -> tuple[int, ...]:
    """The four 16-bit chunks of an unsigned 64-bit hash, most significant first."""
    mask = (1 << CHUNK_BITS) - 1
    return tuple((value >> (CHUNK_BITS * (N_CHUNKS - 1 - i))) & mask for i in range(N_CHUNKS))


def signed(value: int) -> int:
    """The unsigned hash as the signed 64-bit integer a BIGINT column holds."""
    return value - (1 << HASH_BITS) if value >= 1 << (HASH_BITS - 1) else value


def unsigned(value: int) -> int:
    return value + (1 << HASH_BITS) if value < 0 else value


@cache
def _flips(radius: int) -> tuple[int, ...]:
    """Every 16-bit mask with at most ``radius`` bits set."""
    masks = [0]
    for r in range(1, radius + 1):
        masks.extend(sum(1 << bit for bit in bits) for bits in combinations(range(CHUNK_BITS), r))
    return tuple(masks)


def chunk_radius(max_distance: int) -> int:
    """The radius each chunk is searched at so that no hash within ``max_distance`` is missed."""
    return max_distance // N_CHUNKS


def candidate_chunks(values: Sequence[int], max_distance: int) -> list[set[int]]:
    """Per chunk position, the chunk values a stored hash within ``max_distance`` of one of ``values`` may have
    in that position (a stored hash is a candidate when any one of its chunks is in its position's set)."""
    flips = _flips(chunk_radius(max_distance))
    wanted: list[set[int]] = [set() for _ in range(N_CHUNKS)]
    for value in values:
        for position, chunk in enumerate(chunks(value)):
            wanted[position].update(chunk ^ flip for flip in flips)
    return wanted
