"""The whole GPU data path (DALI decode → MTCNN on the GPU → crops and preprocessing on the GPU) gives the CPU
path's P(fake), with the same demo engine scoring both, so only the data path differs.

Tolerance: |ΔP(fake)| ≤ 0.05 per video and per region. The decoders' colour conversions differ by up to a few
uint8 levels (test_dali_decode), which moves MTCNN's boxes by a pixel or so and the crops with them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from deepsift.daemon.pipeline import JudgeConfig, MediaJob, prepare
from deepsift.engines import dali
from deepsift.engines.aggregate import AggregationRule, ScoredItem, aggregate
from deepsift.engines.backends import load_engine
from deepsift.engines.decoders import DECODERS, Decoder, DecoderOptions, open_decoder
from deepsift.engines.faces import MtcnnFaceDetector

MAX_P_FAKE_DIFF = 0.05
RULE = AggregationRule.parse("mean")


@pytest.fixture(scope="module")
def gpu_decoder() -> Iterator[Decoder]:
    if not dali._dali_installed():
        pytest.fail("nvidia.dali is not installed: the GPU checks need the gpu extra (pip install -e '.[gpu]')")
    decoder = open_decoder("dali", DecoderOptions(device="cuda:0"))  # as the daemon opens it: the worker starts
    yield decoder
    decoder.close()


def judge(path: Path, engine, detector, decoder: Decoder):
    config = JudgeConfig(32, RULE, 0.1, decoder, 10**9)
    prepared = prepare(MediaJob(path.name, path.as_uri(), path=path), engine.manifest, detector, config)
    assert prepared.outcome is None, prepared.outcome
    scores = engine.p_fake(prepared.pixels)
    items = [ScoredItem(r.frame_index, float(p), r.track_id) for r, p in zip(prepared.regions, scores, strict=True)]
    return prepared, scores, aggregate(items, RULE, 0.1).p_fake


def test_gpu_path_gives_the_cpu_p_fake(gpu_decoder, demo_store, demo_media) -> None:
    folder, truth = demo_media
    engine = load_engine(demo_store.resolve("demo"))
    cpu_detector, gpu_detector = MtcnnFaceDetector(), MtcnnFaceDetector(device="cuda")
    clips = sorted(folder / name for name in truth if name.endswith(".mp4"))
    assert clips
    pyav = DECODERS.get("pyav")(DecoderOptions())
    for clip in clips:
        on_cpu, cpu_scores, cpu_p = judge(clip, engine, cpu_detector, pyav)
        on_gpu, gpu_scores, gpu_p = judge(clip, engine, gpu_detector, gpu_decoder)
        # the GPU path ran on the GPU end to end
        assert (on_gpu.decoder, on_gpu.decoder_note) == ("dali", None)
        assert isinstance(on_gpu.pixels, torch.Tensor) and on_gpu.pixels.is_cuda
        # and found the same faces in the same frames, scoring them alike
        assert [(r.frame_index, r.track_id) for r in on_gpu.regions] == [
            (r.frame_index, r.track_id) for r in on_cpu.regions
        ]
        assert float(np.abs(gpu_scores - cpu_scores).max()) <= MAX_P_FAKE_DIFF, clip.name
        assert abs(gpu_p - cpu_p) <= MAX_P_FAKE_DIFF, f"{clip.name}: GPU {gpu_p:.4f} vs CPU {cpu_p:.4f}"
