"""Scan throughput and memory: end-to-end `daemon scan` against engine-only inference, same batch size.

Builds ViT-B-16-SigLIP2 image-tower engines at 224 with random weights (one full-frame, one face mode),
generates fixed 10-second 640×360 H.264 clips with a face in them, then prints, per mode:
videos/s and frames/s end to end, engine-only frames/s on batches of the same size, and their ratio.
Also the peak RSS of a `daemon scan` process on a 10-minute clip vs a 10-second clip.

    .venv/bin/python benchmarks/scan.py                # everything (~15 min on 2 CPU cores)
    .venv/bin/python benchmarks/scan.py --skip-memory  # throughput only
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon.db import make_engine, upgrade_database  # noqa: E402
from daemon.logs import configure_logging  # noqa: E402
from daemon.pipeline import JudgeConfig  # noqa: E402
from daemon.repository import VerdictRepository  # noqa: E402
from daemon.scan import run_scan  # noqa: E402
from engines.aggregate import AggregationRule  # noqa: E402
from engines.backends import load_engine  # noqa: E402
from engines.faces import MtcnnFaceDetector  # noqa: E402
from engines.media import write_video  # noqa: E402
from engines.models import build_detector  # noqa: E402
from engines.recipes import load_recipe  # noqa: E402
from engines.store import EngineStore  # noqa: E402
from trainer.build import build_onnx_engine  # noqa: E402
from trainer.demo import scene_factory  # noqa: E402

RECIPE = "siglip2-binary-b16-224"
FPS = 25.0
FRAMES_PER_VIDEO = 32


def build_engines(store: EngineStore) -> None:
    base = load_recipe(RECIPE)
    for mode in ("full", "face"):
        if store.current_version(f"b16-{mode}") is None:
            recipe = load_recipe(RECIPE, input={**base.input.model_dump(), "crop_mode": mode})
            build_onnx_engine(build_detector(recipe), recipe, store, f"b16-{mode}", evaluation={"untrained_head": 1})


def make_clip(path: Path, seconds: float, seed: int) -> Path:
    """A panning scene around a real face photo, encoded as H.264 (frames rendered one at a time)."""
    if path.exists():
        return path
    factory, rng = scene_factory(), np.random.default_rng(seed)
    photo, start, end = factory.forged_photo(None), factory.random_view(rng), factory.random_view(rng)
    n = int(seconds * FPS)

    def frame(t: int) -> np.ndarray:
        return factory.render(photo, start.toward(end, t / max(1, n - 1)), background=seed)[0]

    write_video(path, (frame(t) for t in range(n)), fps=FPS)
    return path


def scan_throughput(store: EngineStore, name: str, clips: list[Path], workdir: Path) -> dict[str, float]:
    engine = load_engine(store.resolve(name))
    manifest = engine.manifest
    detector = MtcnnFaceDetector() if manifest.input.crop_mode == "face" else None
    url = f"sqlite:///{workdir / f'{name}.db'}"
    upgrade_database(url)
    repository = VerdictRepository(make_engine(url))
    config = JudgeConfig(FRAMES_PER_VIDEO, AggregationRule.parse("mean"), 0.1, "pyav", 2 << 30)
    batch = np.random.default_rng(0).standard_normal((FRAMES_PER_VIDEO, 3, 224, 224)).astype(np.float32)
    engine.logits(batch)  # warm-up

    def engine_only_seconds() -> float:
        started = time.perf_counter()
        for _ in clips:
            engine.logits(batch)
        return time.perf_counter() - started

    before = engine_only_seconds()
    started = time.perf_counter()
    results = list(run_scan(clips, engine, repository, config, detector, prefetch=2))
    e2e = time.perf_counter() - started
    engine_only = (before + engine_only_seconds()) / 2  # engine-only runs on both sides of the scan, averaged
    scored_frames = sum(len(r.verdict.frames) for r in results)
    return {
        "videos": len(results),
        "statuses": ",".join(sorted({r.verdict.status for r in results})),
        "e2e_videos_per_s": len(results) / e2e,
        "e2e_frames_per_s": scored_frames / e2e,
        "engine_frames_per_s": len(clips) * FRAMES_PER_VIDEO / engine_only,
        "ratio": (scored_frames / e2e) / (len(clips) * FRAMES_PER_VIDEO / engine_only),
    }


# Linux copies the parent's peak RSS into a forked child, so a child of this (large) benchmark process would
# report at least our own peak. A small launcher process forks the scan and reports its child's peak instead.
_LAUNCHER = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def peak_rss_of_scan(store: EngineStore, name: str, clip: Path, workdir: Path) -> float:
    """Peak RSS (MiB) of a fresh `daemon scan` process judging one clip."""
    url = f"sqlite:///{workdir / f'rss-{clip.stem}.db'}"
    upgrade_database(url)
    env = {**os.environ, "DEEPSIFT_DATABASE_URL": url, "DEEPSIFT_ENGINE_STORE": str(store.root)}
    daemon = Path(sys.executable).parent / "daemon"
    command = [sys.executable, "-c", _LAUNCHER, str(daemon), "--engine", name, "scan", str(clip)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return int(result.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "var" / "bench", help="clips and engines are cached here")
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    configure_logging("WARNING", "console")
    args.data.mkdir(parents=True, exist_ok=True)
    store = EngineStore(args.data / "engines")
    build_engines(store)
    clips = [make_clip(args.data / f"clip10s_{i}.mp4", 10.0, seed=i) for i in range(args.videos)]
    print(
        f"{len(clips)} clips, 10 s 640x360 H.264 @ {FPS:g} fps, {FRAMES_PER_VIDEO} frames sampled per video; engine "
        f"{RECIPE} (random weights, ONNX Runtime CPU, batch {FRAMES_PER_VIDEO}); {os.cpu_count()} CPUs"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for mode in () if args.skip_throughput else ("full", "face"):
            r = scan_throughput(store, f"b16-{mode}", clips, Path(tmp))
            print(
                f"{mode:>4} mode: {r['e2e_videos_per_s']:.3f} videos/s, {r['e2e_frames_per_s']:.2f} frames/s "
                f"end to end; engine only {r['engine_frames_per_s']:.2f} frames/s; ratio {r['ratio']:.3f} "
                f"({r['videos']} verdicts: {r['statuses']})"
            )
        if not args.skip_memory:
            long_clip = make_clip(args.data / "clip10min.mp4", 600.0, seed=100)
            short_rss = peak_rss_of_scan(store, "b16-full", clips[0], Path(tmp))
            long_rss = peak_rss_of_scan(store, "b16-full", long_clip, Path(tmp))
            print(
                f"peak RSS, full-frame scan: 10-second clip {short_rss:.0f} MiB, 10-minute clip {long_rss:.0f} MiB, "
                f"ratio {long_rss / short_rss:.3f}"
            )


if __name__ == "__main__":
    main()
