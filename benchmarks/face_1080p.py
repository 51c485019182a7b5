"""1080p face mode, timed side by side: `daemon scan`'s pipeline against a naive sequential script and against the
engine alone (issue 16). Run through ``benchmarks/scan.py --face-1080p``.

The clips are 10-second 1920×1080 H.264 (libx264 defaults, B-frames) of a face crossing real photos
(``tests/scenes.py``). The naive baseline is what a researcher would write: decode every frame with PyAV, keep N
evenly spaced, facenet-pytorch's MTCNN on the full-resolution frames of each video in one call, a square crop
per face, one engine batch per video, no overlap. deepsift runs ``run_scan`` with the daemon's defaults. The
engine-only figure runs the engine on batches of the same size, before and after the scan (averaged).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from deepsift.daemon.db import make_database, upgrade_database
from deepsift.daemon.pipeline import JudgeConfig
from deepsift.daemon.repository import VerdictRepository
from deepsift.daemon.scan import run_scan
from deepsift.daemon.settings import Settings
from deepsift.engines.aggregate import AggregationRule
from deepsift.engines.backends import load_engine
from deepsift.engines.budgets import MediaBudget
from deepsift.engines.decoders import DecoderOptions, open_decoder
from deepsift.engines.faces import FaceBox, square_crop
from deepsift.engines.preprocess import preprocess_batch
from deepsift.engines.store import EngineStore
from tests.scenes import write_face_clip

FRAMES = 32
SECONDS = 10.0


def clips(data: Path, n: int) -> list[Path]:
    return [write_face_clip(data / f"face1080p_{i}.mp4", 1920, 1080, SECONDS, seed=i) for i in range(n)]


def naive_video(path: Path, engine, mtcnn, margin: float) -> float:
    """The researcher's script for one video: its mean P(fake)-logit over every face found."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        keep = set(np.rint(np.linspace(0, stream.frames - 1, FRAMES)).astype(int).tolist())
        frames = [f.to_ndarray(format="rgb24") for i, f in enumerate(container.decode(stream)) if i in keep]
    boxes, _ = mtcnn.detect(np.stack(frames))
    crops = [
        square_crop(frame, FaceBox(*map(float, box), confidence=1.0), margin)
        for frame, frame_boxes in zip(frames, boxes, strict=True)
        for box in (frame_boxes if frame_boxes is not None else [])
    ]
    logits = engine.logits(np.asarray(preprocess_batch(crops, engine.manifest.input)))
    return float(np.mean(logits))


def naive_seconds(videos: list[Path], engine) -> float:
    from facenet_pytorch import MTCNN

    mtcnn = MTCNN(keep_all=True, post_process=False, device="cpu").eval()
    started = time.perf_counter()
    for path in videos:
        naive_video(path, engine, mtcnn, engine.manifest.input.face_margin)
    return time.perf_counter() - started


def deepsift_seconds(videos: list[Path], engine, workdir: Path) -> tuple[float, int]:
    settings = Settings()
    url = f"sqlite:///{workdir / f'{engine.manifest.name}-{time.time_ns()}.db'}"
    upgrade_database(url)
    repository = VerdictRepository(make_database(url))
    budget = MediaBudget(detect_max_side=settings.detect_max_side)
    config = JudgeConfig(FRAMES, AggregationRule.parse("mean"), 0.1, open_decoder("pyav", DecoderOptions()), 2 << 30,
                         budget=budget)  # fmt: skip
    started = time.perf_counter()
    # no detector given: one per prepare worker, as `daemon scan` makes them
    results = list(run_scan(videos, engine, repository, config, None, settings))
    elapsed = time.perf_counter() - started
    if {r.verdict.status for r in results} != {"ok"}:
        raise RuntimeError(f"not every clip was judged: {[(r.verdict.status, r.verdict.code) for r in results]}")
    return elapsed, sum(len(r.verdict.frames) for r in results)


def engine_only_seconds(engine, n_videos: int) -> float:
    size = engine.manifest.input.size
    batch = np.random.default_rng(0).standard_normal((FRAMES, 3, size, size)).astype(np.float32)
    started = time.perf_counter()
    for _ in range(n_videos):
        engine.logits(batch)
    return time.perf_counter() - started


def compare(store: EngineStore, name: str, videos: list[Path]) -> dict[str, float]:
    engine = load_engine(store.resolve(name))
    engine.logits(np.zeros((FRAMES, 3, engine.manifest.input.size, engine.manifest.input.size), np.float32))
    before = engine_only_seconds(engine, len(videos))
    with tempfile.TemporaryDirectory() as tmp:
        ours, scored = deepsift_seconds(videos, engine, Path(tmp))
    theirs = naive_seconds(videos, engine)
    engine_only = (before + engine_only_seconds(engine, len(videos))) / 2
    n = len(videos)
    return {
        "deepsift_videos_per_s": n / ours,
        "naive_videos_per_s": n / theirs,
        "vs_naive": theirs / ours,
        "e2e_vs_engine": (scored / ours) / (n * FRAMES / engine_only),
    }


def report(store: EngineStore, engines: dict[str, str], data: Path, n_videos: int) -> None:
    videos = clips(data, n_videos)
    print(
        f"{n_videos} clips, {SECONDS:g} s 1920x1080 H.264 (libx264 defaults) of a face crossing photos, "
        f"{FRAMES} frames sampled; face mode, detect_max_side {Settings().detect_max_side}; {os.cpu_count()} CPUs"
    )
    for label, name in engines.items():
        r = compare(store, name, videos)
        print(
            f"  {label:10} deepsift {r['deepsift_videos_per_s']:.3f} videos/s, naive sequential "
            f"{r['naive_videos_per_s']:.3f} videos/s: {r['vs_naive']:.2f}x; end to end / engine only "
            f"{r['e2e_vs_engine']:.3f}"
        )
