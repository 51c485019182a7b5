"""GPU data path throughput on 1080p H.264: decode frames/s (DALI vs PyAV), and end to end vs engine only.

Generates 1920×1080 H.264 clips (benchmarks/scan.py's panning face scene, scaled up) into a temporary folder
and samples 32 frames per video. Prints:

- decode: sampled frames/s of PyAV (CPU, numpy frames) and of the DALI decoder (GPU worker, frames handed over
  as CUDA tensors), where an NVIDIA GPU and DALI are present;
- end to end (``daemon.scan.run_scan``: decode → full frames or faces → preprocess → engine → verdict in
  SQLite) in videos/s and frames/s, against engine-only frames/s on batches of the same size (32), and their
  ratio, per crop mode; the target is a ratio ≥ 0.8.

Without a GPU: PyAV + CPU preprocessing + the ONNX Runtime engines of benchmarks/scan.py (ViT-B-16-SigLIP2 at
224, random weights). With one (``--device cuda``, the default when torch sees a GPU): DALI + GPU MTCNN, crops
and preprocessing + the best engine backend that builds (TensorRT fp16 where ``tensorrt`` imports, else the
torch backend in fp16), engine-only timed on a batch already on the GPU.

    .venv/bin/python benchmarks/gpu_pipeline.py                                  # 8 × 10 s clips, both modes
    .venv/bin/python benchmarks/gpu_pipeline.py --videos 2 --seconds 2 --modes full   # a quick CPU baseline
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import scan as scan_bench  # noqa: E402  (benchmarks/scan.py: recipe, engines, clip scene)

from deepsift.daemon.db import make_database, upgrade_database  # noqa: E402
from deepsift.daemon.logs import configure_logging  # noqa: E402
from deepsift.daemon.pipeline import JudgeConfig  # noqa: E402
from deepsift.daemon.repository import VerdictRepository  # noqa: E402
from deepsift.daemon.scan import run_scan  # noqa: E402
from deepsift.daemon.settings import Settings  # noqa: E402
from deepsift.engines import dali  # noqa: E402
from deepsift.engines.aggregate import AggregationRule  # noqa: E402
from deepsift.engines.backends import BackendOptions, LoadedEngine, load_engine  # noqa: E402
from deepsift.engines.decoders import DECODERS, Decoder, DecoderOptions, choose_decoder, open_decoder  # noqa: E402
from deepsift.engines.faces import MtcnnFaceDetector  # noqa: E402
from deepsift.engines.media import write_video  # noqa: E402
from deepsift.engines.store import EngineStore  # noqa: E402
from deepsift.trainer.demo import scene_factory  # noqa: E402

WIDTH, HEIGHT = 1920, 1080
FRAMES = scan_bench.FRAMES_PER_VIDEO  # 32


def make_hd_clip(path: Path, seconds: float, seed: int) -> Path:
    """scan.py's panning scene around a real face photo, scaled to 1080p and encoded as H.264."""
    factory, rng = scene_factory(), np.random.default_rng(seed)
    photo, start, end = factory.forged_photo(None), factory.random_view(rng), factory.random_view(rng)
    n = int(seconds * scan_bench.FPS)

    def frame(t: int) -> np.ndarray:
        small = factory.render(photo, start.toward(end, t / max(1, n - 1)), background=seed)[0]
        return np.asarray(Image.fromarray(small).resize((WIDTH, HEIGHT), Image.BILINEAR))

    write_video(path, (frame(t) for t in range(n)), fps=scan_bench.FPS)
    return path


def gpu_backend() -> str:
    """The best backend that builds here: TensorRT where it imports, else torch."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "torch"
    return "tensorrt"


def build_gpu_engines(store: EngineStore, backend: str) -> None:
    """scan.py's two engines (full frame, face), built for ``backend`` in fp16."""
    from deepsift.engines.models import build_detector
    from deepsift.engines.recipes import load_recipe
    from deepsift.trainer.build import build_engine

    base = load_recipe(scan_bench.RECIPE)
    for mode in ("full", "face"):
        name = f"b16-{mode}-{backend}"
        if store.current_version(name) is None:
            recipe = load_recipe(scan_bench.RECIPE, input={**base.input.model_dump(), "crop_mode": mode})
            build_engine(build_detector(recipe), recipe, store, name, backend=backend, precision="fp16")


def decode_rate(decode, clips: list[Path]) -> float:
    """Sampled frames per second of ``decode`` over the clips (after one warm-up video)."""
    decode(clips[0], FRAMES)
    started = time.perf_counter()
    frames = sum(len(decode(clip, FRAMES).frames) for clip in clips)
    _synchronise()
    return frames / (time.perf_counter() - started)


def _synchronise() -> None:
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
        sys.modules["torch"].cuda.synchronize()


def engine_only_rate(engine: LoadedEngine, device: str, videos: int) -> float:
    """Engine frames/s on batches of FRAMES, the input already where the end-to-end path hands it over."""
    size = engine.manifest.input.size
    batch = np.random.default_rng(0).standard_normal((FRAMES, 3, size, size)).astype(np.float32)
    if device != "cpu":
        import torch

        batch = torch.from_numpy(batch).to(device)
    engine.logits(batch)  # warm-up (results come back as numpy: the timing includes the sync)
    started = time.perf_counter()
    for _ in range(videos):
        engine.logits(batch)
    return videos * FRAMES / (time.perf_counter() - started)


def end_to_end(engine: LoadedEngine, clips: list[Path], decoder: Decoder, device: str, workdir: Path) -> dict:
    manifest = engine.manifest
    detector = MtcnnFaceDetector(device=device) if manifest.input.crop_mode == "face" else None
    url = f"sqlite:///{workdir / f'{manifest.name}-{decoder.name}.db'}"
    upgrade_database(url)
    repository = VerdictRepository(make_database(url))
    config = JudgeConfig(FRAMES, AggregationRule.parse("mean"), 0.1, decoder, 2 << 30)
    warm_up = Settings(prefetch=2)  # the first scan warms the DALI worker, MTCNN and the engine
    list(run_scan(clips[:1], engine, repository, config, detector, warm_up))
    before = engine_only_rate(engine, device, len(clips))
    started = time.perf_counter()
    results = list(run_scan(clips, engine, repository, config, detector, Settings(prefetch=2)))
    e2e_s = time.perf_counter() - started
    engine_fps = (before + engine_only_rate(engine, device, len(clips))) / 2  # on both sides of the scan
    scored = sum(len(r.verdict.frames) for r in results)
    return {
        "videos_per_s": len(results) / e2e_s,
        "frames_per_s": scored / e2e_s,
        "engine_frames_per_s": engine_fps,
        "ratio": (scored / e2e_s) / engine_fps,
        "statuses": ",".join(sorted({r.verdict.status for r in results})),
        "decoders": ",".join(sorted({f"{r.verdict.decoder}" for r in results})),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--modes", default="full,face", help="crop modes to run end to end")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--data", type=Path, default=ROOT / "var" / "bench", help="engines are cached here")
    args = parser.parse_args()
    configure_logging("WARNING", "console")
    chosen = choose_decoder("auto", args.device)
    device = ("cuda:0" if args.device == "auto" else args.device) if chosen == "dali" else "cpu"
    store = EngineStore(args.data / "engines")
    if device == "cpu":
        scan_bench.build_engines(store)
        names, backend = {mode: f"b16-{mode}" for mode in ("full", "face")}, "onnxruntime"
    else:
        backend = gpu_backend()
        build_gpu_engines(store, backend)
        names = {mode: f"b16-{mode}-{backend}" for mode in ("full", "face")}
    decoder = open_decoder(chosen, DecoderOptions(device=device))  # the daemon's start-up: DALI's worker starts here
    try:
        run(args, store, names, backend, decoder, device)
    finally:
        decoder.close()


def run(args: argparse.Namespace, store: EngineStore, names: dict, backend: str, decoder: Decoder, device: str) -> None:
    with tempfile.TemporaryDirectory(prefix="deepsift-gpu-bench-") as tmp:
        workdir = Path(tmp)
        clips = [make_hd_clip(workdir / f"clip{i}.mp4", args.seconds, seed=i) for i in range(args.videos)]
        print(
            f"{len(clips)} clips, {args.seconds:g} s {WIDTH}x{HEIGHT} H.264 @ {scan_bench.FPS:g} fps, {FRAMES} frames "
            f"sampled per video; decoder {decoder.name}, device {device}, engine {scan_bench.RECIPE} ({backend}, batch "
            f"{FRAMES}); {os.cpu_count()} CPUs"
        )
        pyav = DECODERS.get("pyav")(DecoderOptions())
        print(f"decode  pyav: {decode_rate(pyav, clips):8.1f} frames/s (CPU, numpy)")
        if decoder.name == "dali":
            print(f"decode  dali: {decode_rate(decoder, clips):8.1f} frames/s (GPU worker, CUDA tensors)")
        else:
            print(f"decode  dali: unavailable ({dali.dali_missing(args.device)})")
        for mode in args.modes.split(","):
            options = BackendOptions(device=device)
            engine = load_engine(store.resolve(names[mode]), options=options)
            r = end_to_end(engine, clips, decoder, device, workdir)
            print(
                f"{mode:>4} mode: {r['videos_per_s']:.3f} videos/s, {r['frames_per_s']:.2f} frames/s end to end; "
                f"engine only {r['engine_frames_per_s']:.2f} frames/s; ratio {r['ratio']:.3f} "
                f"(verdicts: {r['statuses']}; decoders: {r['decoders']})"
            )


if __name__ == "__main__":
    main()
