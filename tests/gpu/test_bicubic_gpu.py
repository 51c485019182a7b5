"""The bicubic resize of the paper recipes is the same on the GPU as on the CPU (torch's antialiased bicubic on both;
the DALI decoder hands over full-size frames and resizes nothing). Tolerance as for bilinear in
test_preprocess_gpu.py: max |Δ| ≤ 1e-4 on normalised values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepsift.engines.preprocess import InputContract, preprocess_batch


@pytest.mark.parametrize("mode", ["squash", "shorter_center_crop", "longest_pad"])
@pytest.mark.parametrize("size", [224, 384])
def test_gpu_bicubic_matches_cpu(mode: str, size: int) -> None:
    from skimage import data

    frames = [data.astronaut(), data.chelsea(), data.coffee()]
    contract = InputContract(size=size, resize_mode=mode, interpolation="bicubic")
    on_cpu = preprocess_batch(frames, contract)
    on_gpu = preprocess_batch([torch.from_numpy(f).cuda() for f in frames], contract)
    assert isinstance(on_gpu, torch.Tensor) and on_gpu.is_cuda
    assert float(np.abs(on_gpu.cpu().numpy() - on_cpu).max()) <= 1e-4
