"""DALI on the GPU returns PyAV's sampled frames, and passes over (with a reason) what it must not decode.

Tolerance (colour conversion): NVDEC + DALI's YUV→RGB and FFmpeg's swscale differ in chroma upsampling and
rounding, so frames are compared as uint8 RGB: mean |Δ| ≤ 3 levels and PSNR ≥ 35 dB per frame. Indices and
timestamps must be identical: they are the same frames, not neighbours.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from deepsift.engines import dali
from deepsift.engines.dali import DaliDecoder
from deepsift.engines.decoders import DecoderOptions, choose_decoder, open_decoder
from deepsift.engines.errors import MediaError
from deepsift.engines.media import decode_sampled

MAX_MEAN_ABS_DIFF = 3.0
MIN_PSNR_DB = 35.0


@pytest.fixture(scope="module")
def decoder() -> Iterator[DaliDecoder]:
    if not dali._dali_installed():
        pytest.fail("nvidia.dali is not installed: the GPU checks need the gpu extra (pip install -e '.[gpu]')")
    decoder = open_decoder("dali", DecoderOptions(device="cuda:0"))  # a start failure fails here, with DALI's message
    assert isinstance(decoder, DaliDecoder) and decoder.name == "dali"
    yield decoder
    decoder.close()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def test_auto_chooses_dali_on_this_machine() -> None:
    assert choose_decoder("auto", "cuda") == "dali"


@pytest.mark.parametrize("clip", ["sd", "hd", "rotated", "gop25", "mkv"])
@pytest.mark.parametrize("n_frames", [1, 7, 32])
def test_dali_frames_are_pyavs_frames(decoder, gpu_clips, clip: str, n_frames: int) -> None:
    # Given a clip DALI should take, when both decoders sample it
    on_gpu = decoder(gpu_clips[clip], n_frames)
    on_cpu = decode_sampled(gpu_clips[clip], n_frames)
    # Then DALI decoded it, on the GPU, and the same frames came back at the same timestamps
    assert (on_gpu.decoder, on_gpu.fallback_reason) == ("dali", None)
    assert on_gpu.facts == on_cpu.facts
    assert [(f.index, f.pts_s) for f in on_gpu.frames] == [(f.index, f.pts_s) for f in on_cpu.frames]
    for gpu_frame, cpu_frame in zip(on_gpu.frames, on_cpu.frames, strict=True):
        assert isinstance(gpu_frame.rgb, torch.Tensor) and gpu_frame.rgb.is_cuda and gpu_frame.rgb.dtype == torch.uint8
        got, expected = gpu_frame.rgb.cpu().numpy(), cpu_frame.rgb
        assert got.shape == expected.shape
        diff = np.abs(got.astype(np.int16) - expected.astype(np.int16))
        detail = (
            f"frame {cpu_frame.index}: mean |Δ| per channel {diff.mean(axis=(0, 1))}, PSNR {psnr(got, expected):.1f}"
        )
        assert diff.mean() <= MAX_MEAN_ABS_DIFF, detail
        assert psnr(got, expected) >= MIN_PSNR_DB, detail


def test_in_memory_bytes_decode_like_the_file(decoder, gpu_clips) -> None:
    from_bytes = decoder(gpu_clips["sd"].read_bytes(), 8)
    from_file = decoder(gpu_clips["sd"], 8)
    assert from_bytes.decoder == "dali"
    for a, b in zip(from_bytes.frames, from_file.frames, strict=True):
        assert torch.equal(a.rgb, b.rgb)


@pytest.mark.parametrize("clip, reason", [("vfr", "variable_frame_rate"), ("mpeg4", "codec:mpeg4")])
def test_clips_dali_must_not_take_are_pyavs_with_the_reason(decoder, gpu_clips, clip: str, reason: str) -> None:
    decoded = decoder(gpu_clips[clip], 8)
    expected = decode_sampled(gpu_clips[clip], 8)
    assert (decoded.decoder, decoded.fallback_reason) == ("pyav", reason)
    for a, b in zip(decoded.frames, expected.frames, strict=True):
        np.testing.assert_array_equal(a.rgb, b.rgb)


def test_a_truncated_clip_is_pyavs_media_error(decoder, gpu_clips) -> None:
    # The index promises frames the file no longer holds: the probe sends it to PyAV, which refuses it
    assert dali.route_media(gpu_clips["truncated"], decoder.settings)[1] in {
        "frame_count_mismatch",
        "probe_error:corrupt_media",
    }
    with pytest.raises(MediaError) as error:
        decoder(gpu_clips["truncated"], 8)
    assert error.value.code in {"truncated_media", "corrupt_media"}


def test_a_damaged_bitstream_costs_at_most_that_video_and_the_worker_recovers(decoder, gpu_clips: dict[str, Path]):
    # Given a clip with bytes overwritten inside its frames (the container is intact, so the probe sends it to DALI)
    began = time.monotonic()
    try:
        decoded = decoder(gpu_clips["damaged"], 16)
    except MediaError:  # PyAV could not decode it either: an error verdict for this video only
        decoded = None
    # Then DALI decoded it, or it fell back for a worker reason, within the timeout
    if decoded is not None and decoded.decoder == "pyav":
        assert decoded.fallback_reason in {"dali_error", "dali_crashed", "dali_timeout"}
    assert time.monotonic() - began < decoder.settings.timeout_s + decoder.settings.start_timeout_s
    # and the next clip decodes on the GPU again
    assert decoder(gpu_clips["sd"], 4).decoder == "dali"
