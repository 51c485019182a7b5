"""Scan throughput and memory: end-to-end `daemon scan` against engine-only inference, same batch size.

Builds ViT-B-16-SigLIP2 image-tower engines at 224 with random weights (one full-frame, one face mode),
generates fixed 10-second 640×360 H.264 clips with a face in them, then prints, per mode:
videos/s and frames/s end to end, engine-only frames/s on batches of the same size, and their ratio.
Also the peak RSS of a `daemon scan` process on a 10-minute clip vs a 10-second clip, and per job for a
1080p clip, a 4K clip and an 8K photo (each scanned alone, face mode), beside the ceiling the media budgets
imply (``MemoryCeiling`` in tests/hostile_media.py, from the settings' defaults).

    .venv/bin/python benchmarks/scan.py                # everything (~15 min on 2 CPU cores)
    .venv/bin/python benchmarks/scan.py --skip-memory  # throughput only
    .venv/bin/python benchmarks/scan.py --memory       # peak RSS per job for 1080p, 4K, 8K and the ceiling only
    .venv/bin/python benchmarks/scan.py --face-1080p   # 1080p face mode vs a naive script and the engine (~10 min)

``--face-1080p`` (``benchmarks/face_1080p.py``) times 10-second 1080p clips in face mode with the demo engine (trained
into the data folder on first use, ~2 min) and the ViT-B/16 engine: deepsift's videos/s beside a naive sequential
script's, and end to end against engine only.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlalchemy import text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import face_1080p  # noqa: E402
from deepsift.daemon.db import make_database, upgrade_database  # noqa: E402
from deepsift.daemon.logs import configure_logging  # noqa: E402
from deepsift.daemon.pipeline import JudgeConfig  # noqa: E402
from deepsift.daemon.repository import VerdictRepository  # noqa: E402
from deepsift.daemon.scan import run_scan  # noqa: E402
from deepsift.daemon.settings import Settings  # noqa: E402
from deepsift.engines.aggregate import AggregationRule  # noqa: E402
from deepsift.engines.backends import load_engine  # noqa: E402
from deepsift.engines.faces import MtcnnFaceDetector  # noqa: E402
from deepsift.engines.media import write_video  # noqa: E402
from deepsift.engines.models import build_detector  # noqa: E402
from deepsift.engines.recipes import load_recipe  # noqa: E402
from deepsift.engines.store import EngineStore  # noqa: E402
from deepsift.trainer.build import build_onnx_engine  # noqa: E402
from deepsift.trainer.demo import scene_factory, train_demo_engine  # noqa: E402
from tests.hostile_media import Budgets, MemoryCeiling, measure, runtime_and_engine_mib, write_clip, write_photo  # noqa: E402

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
    repository = VerdictRepository(make_database(url))
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
    results = list(run_scan(clips, engine, repository, config, detector, Settings(prefetch=2)))
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


def scan_alone(store: EngineStore, name: str, media: Path, workdir: Path) -> tuple[float, str]:
    """Peak RSS (MiB) of a fresh `daemon scan` process judging one file, and the verdict it stored.

    The scan runs under the launcher of tests/hostile_media.py: a child of this (large) benchmark process would
    report at least our own peak, since Linux copies it into a forked child."""
    url = f"sqlite:///{workdir / f'rss-{media.stem}.db'}"
    upgrade_database(url)
    env = {**os.environ, "DEEPSIFT_DATABASE_URL": url, "DEEPSIFT_ENGINE_STORE": str(store.root)}
    daemon = Path(sys.executable).parent / "daemon"
    result = measure([str(daemon), "--engine", name, "scan", str(media)], env, guard_mib=16 << 10, timeout=3600)
    if result.returncode != 0 or result.killed:
        raise RuntimeError(f"scan of {media.name}: {result}")
    engine = make_database(url)
    with engine.connect() as c:
        status, code, frames = c.execute(text("SELECT status, code, frames_sampled FROM verdicts")).one()
    engine.dispose()
    return result.peak_mib, f"{status} {code or ''} ({frames} frames)".replace("  ", " ")


def peak_rss_of_scan(store: EngineStore, name: str, clip: Path, workdir: Path) -> float:
    """Peak RSS (MiB) of a fresh `daemon scan` process judging one clip."""
    return scan_alone(store, name, clip, workdir)[0]


def large_media(data: Path, seconds: float) -> list[tuple[str, Path, dict[str, int]]]:
    """A 1080p and a 4K H.264 clip (``seconds`` long, a face panning) and an 8K JPEG photo, cached in ``data``;
    each with its label and its size as ``MemoryCeiling.of`` takes it."""
    n = round(seconds * FPS)
    made = []
    for label, width, height in (("1080p clip", 1920, 1080), ("4K clip", 3840, 2160)):
        path = data / f"clip{height}p_{n}f.mp4"
        if not path.exists():
            write_clip(path, width, height, n, fps=FPS)
        made.append(
            (f"{label} {width}x{height}, {n} frames", path, {"frame_pixels": width * height, "image_pixels": 0})
        )
    photo = data / "photo_7680x4320.jpg"
    if not photo.exists():
        write_photo(photo, 7680, 4320)
    return [*made, ("8K photo 7680x4320", photo, {"frame_pixels": 0, "image_pixels": 7680 * 4320})]


def memory_per_job(store: EngineStore, name: str, data: Path, seconds: float, workdir: Path) -> None:
    """Print the peak RSS of a scan of each large medium alone, over a scan of a small image, beside what the
    budgets allow a job of its size; then the ceilings of a `daemon scan` and a `daemon run` process."""
    small = data / "small_photo.jpg"
    if not small.exists():
        write_photo(small, 320, 240)
    baseline, _ = scan_alone(store, name, small, workdir)
    settings = Settings()
    budgets = Budgets.from_settings(settings)
    print(
        f"peak RSS per job, `daemon scan` of one file, engine {name}, frames_per_video {settings.frames_per_video}, "
        f"job_frame_budget_mb {settings.job_frame_budget_mb}, {os.cpu_count()} CPUs; "
        f"baseline (a 320x240 photo): {baseline:.0f} MiB"
    )
    for label, path, pixels in large_media(data, seconds):
        peak, verdict = scan_alone(store, name, path, workdir)
        job = MemoryCeiling.of(budgets, baseline, **pixels)
        print(
            f"  {label:32} {peak:6.0f} MiB  +{peak - baseline:5.0f} over the baseline; the budgets allow "
            f"+{job.total_mib - baseline:.0f} at this size; {verdict}"
        )
    estimate = runtime_and_engine_mib(store.resolve(name))
    print(f"runtime and engine: measured {baseline:.0f} MiB (the baseline), estimated {estimate:.0f}")
    for what, jobs in (
        ("`daemon scan`", 1),
        (f"`daemon run`, prepare_workers {settings.prepare_workers}", settings.prepare_workers),
    ):
        ceiling = MemoryCeiling.of(budgets, baseline, jobs).explain()
        print(f"ceiling the budgets imply for any admitted media, {what}: {ceiling}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "var" / "bench", help="clips and engines are cached here")
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--memory", action="store_true", help="only the peak RSS per job for 1080p, 4K, 8K media")
    parser.add_argument("--memory-seconds", type=float, default=4.0, help="length of the 1080p and 4K clips")
    parser.add_argument("--memory-engine", choices=("face", "full"), default="face")
    parser.add_argument("--face-1080p", action="store_true", help="only 1080p face mode vs a naive script (issue 16)")
    parser.add_argument("--face-videos", type=int, default=4, help="1080p clips for --face-1080p")
    args = parser.parse_args()
    configure_logging("WARNING", "console")
    args.data.mkdir(parents=True, exist_ok=True)
    store = EngineStore(args.data / "engines")
    build_engines(store)
    if args.face_1080p:
        if store.current_version("demo") is None:
            train_demo_engine(store, "demo", log=lambda line: None)
        face_1080p.report(store, {"demo": "demo", "ViT-B/16": "b16-face"}, args.data, args.face_videos)
        return
    if args.memory:
        with tempfile.TemporaryDirectory() as tmp:
            memory_per_job(store, f"b16-{args.memory_engine}", args.data, args.memory_seconds, Path(tmp))
        return
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
            memory_per_job(store, f"b16-{args.memory_engine}", args.data, args.memory_seconds, Path(tmp))


if __name__ == "__main__":
    main()
