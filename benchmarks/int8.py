"""fp32 against int8 ONNX Runtime engines on CPU, side by side in one run: images/s at the same batch sizes and
thread count, how far int8 moves P(fake), and validation ROC-AUC.

Engines (cached under --data, built once):
- ``demo``: the demo engine (``trainer demo``'s detector and budget), with its own validation split regenerated
  from the same seed (400 face crops it picked its threshold on, never trained on). AUC is reported for it only.
- ``b16``: ViT-B-16-SigLIP2 at 224 (recipe siglip2-binary-b16-224) with random weights, as benchmarks/scan.py
  builds it; its AUC would mean nothing, so only throughput and the P(fake) deviation (on 64 face crops at 224).

The int8 artifact is what ``trainer build-engine --precision int8`` builds from the same export
(``trainer.quantize.quantize_onnx`` of the fp32 ``model.onnx``); P(fake) is each engine's calibrated P(fake) and
the deviation the largest |int8 − fp32| on the golden batch (16 images, as the parity gate draws them) and on the
crops. Throughput: at each batch size, one warm-up run each, then rounds of one fp32 and one int8 run of the same
random batch (so both meet the same load on a shared machine), up to --rounds or --time-budget seconds; images/s is
the batch size over the median time.

    .venv/bin/python benchmarks/int8.py                                  # both engines (~10 min on 2 cores)
    .venv/bin/python benchmarks/int8.py --models demo --rounds 50        # the demo engine only (~1 min, once trained)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.engines import Prepare, onnxruntime_cpu  # noqa: E402
from deepsift.engines.backends import BackendOptions, LoadedEngine, load_engine  # noqa: E402
from deepsift.engines.backends.ort import OnnxRuntimeBackend  # noqa: E402
from deepsift.engines.models import build_detector  # noqa: E402
from deepsift.engines.recipes import load_recipe  # noqa: E402
from deepsift.engines.store import EngineStore  # noqa: E402
from deepsift.trainer.build import PARITY_TOLERANCES, build_engine  # noqa: E402
from deepsift.trainer.demo import DemoBudget, make_samples, scene_factory, train_demo_engine  # noqa: E402
from deepsift.trainer.export import golden_batch  # noqa: E402
from deepsift.trainer.gates import INT8_MAX_AUC_DROP  # noqa: E402
from deepsift.trainer.metrics import binary_metrics  # noqa: E402
from deepsift.trainer.quantize import quantize_onnx  # noqa: E402

B16_RECIPE = "siglip2-binary-b16-224"
BATCHES = {"demo": (1, 32), "b16": (1, 8)}


@dataclass(frozen=True)
class Accuracy:
    golden_dev: float
    crops_dev: float
    crops: int
    auc_fp32: float | None = None
    auc_int8: float | None = None


def engine_store(data: Path, key: str) -> EngineStore:
    """The cached fp32 engine ``key``: trained (demo) or built with random weights (b16) the first time."""
    store = EngineStore(data / "engines")
    if store.current_version(key) is None:
        print(f"building the {key} engine (once)…", file=sys.stderr, flush=True)
        if key == "demo":
            train_demo_engine(store, "demo", log=lambda line: None)
        else:
            recipe = load_recipe(B16_RECIPE)
            torch.manual_seed(0)
            build_engine(build_detector(recipe), recipe, store, "b16", evaluation={"untrained_head": 1})
    return store


def int8_engine(fp32: LoadedEngine, folder: Path, threads: int) -> tuple[LoadedEngine, float]:
    """The int8 form of ``fp32`` (quantised as the int8 build quantises), and the seconds quantization took."""
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    artifact = quantize_onnx(fp32.path / fp32.manifest.artifact, folder / "model.onnx")
    took = time.perf_counter() - start
    backend_spec = fp32.manifest.backend.model_copy(update={"precision": "int8"})
    manifest = fp32.manifest.model_copy(update={"backend": backend_spec, "artifact": artifact.name})
    backend = OnnxRuntimeBackend(manifest, artifact, BackendOptions(threads=threads))
    return LoadedEngine(manifest=manifest, backend=backend, path=folder), took


def validation_crops(key: str, fp32: LoadedEngine) -> tuple[np.ndarray, np.ndarray]:
    """Face crops cut as the daemon cuts them, at the engine's input: the demo's own validation split, or 64."""
    n = DemoBudget().val_samples if key == "demo" else 64
    pixels, labels = make_samples(scene_factory(), fp32.manifest.input, n, seed=1)  # train_demo_engine(seed=0): 0 + 1
    return pixels.numpy(), labels.numpy().astype(int)


def accuracy(key: str, fp32: LoadedEngine, int8: LoadedEngine) -> Accuracy:
    golden = golden_batch(fp32.manifest.input.size, n=16).numpy()
    crops, labels = validation_crops(key, fp32)
    p = {name: (e.p_fake(golden), e.p_fake(crops)) for name, e in (("fp32", fp32), ("int8", int8))}
    golden_dev, crops_dev = (float(np.max(np.abs(p["int8"][i] - p["fp32"][i]))) for i in (0, 1))
    if key != "demo":
        return Accuracy(golden_dev, crops_dev, len(crops))
    auc = {name: binary_metrics(labels, p[name][1])["roc_auc"] for name in p}
    return Accuracy(golden_dev, crops_dev, len(crops), auc["fp32"], auc["int8"])


def interleaved(prepared: dict[str, Prepare], n: int, rounds: int, budget_s: float) -> tuple[dict[str, float], int]:
    """Images/s of each engine at batch ``n`` and the rounds timed: one warm-up run each, then rounds in which each
    runs once in turn (so a neighbour's burst on a shared machine hits both), up to ``rounds`` or the budget."""
    runs = {precision: prepare(n) for precision, prepare in prepared.items()}
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {precision: [] for precision in runs}
    start = time.perf_counter()
    while len(times["fp32"]) < rounds and (not times["fp32"] or time.perf_counter() - start < budget_s):
        for precision, run in runs.items():
            began = time.perf_counter()
            run()
            times[precision].append(time.perf_counter() - began)
    return {precision: n / statistics.median(t) for precision, t in times.items()}, len(times["fp32"])


Speeds = dict[int, tuple[dict[str, float], int]]  # batch → (images/s by precision, rounds)


def bench(key: str, args: argparse.Namespace) -> tuple[Speeds, Accuracy, dict[str, float]]:
    store = engine_store(args.data, key)
    fp32 = load_engine(store.resolve(key), threads=args.threads)
    int8, quantize_s = int8_engine(fp32, args.data / "int8" / key, args.threads)
    found = accuracy(key, fp32, int8)
    size = fp32.manifest.input.size
    artifacts = {precision: e.path / e.manifest.artifact for precision, e in (("fp32", fp32), ("int8", int8))}
    prepared = {precision: onnxruntime_cpu(path, size, args.threads) for precision, path in artifacts.items()}
    speeds = {}
    for n in sorted(args.batches or BATCHES[key]):
        speeds[n] = interleaved(prepared, n, args.rounds, args.time_budget)
        print(f"  {key} batch {n}: " + ", ".join(f"{p} {v:.2f}" for p, v in speeds[n][0].items()), file=sys.stderr)
    megabytes = {precision: path.stat().st_size / 1e6 for precision, path in artifacts.items()}
    return speeds, found, {**megabytes, "quantize_s": quantize_s}


def print_report(results: dict[str, tuple[Speeds, Accuracy, dict[str, float]]]) -> None:
    print(f"{'engine':6} {'batch':>5} {'fp32 img/s':>11} {'int8 img/s':>11} {'int8/fp32':>9} {'rounds':>6}")
    for key, (speeds, _, _) in results.items():
        for n, (found, rounds) in speeds.items():
            print(f"{key:6} {n:5} {found['fp32']:11.2f} {found['int8']:11.2f} {found['int8'] / found['fp32']:8.2f}× "
                  f"{rounds:6}")  # fmt: skip
    print(f"\n{'engine':6} {'P(fake) max|Δ| golden':>21} {'on crops (n)':>18} {'val AUC fp32':>12} {'int8':>7} "
          f"{'drop':>8} {'MB fp32→int8':>13} {'quantize':>9}")  # fmt: skip
    for key, (_, a, sizes) in results.items():
        auc = f"{'-':>12} {'-':>7} {'-':>8}"
        if a.auc_fp32 is not None and a.auc_int8 is not None:
            auc = f"{a.auc_fp32:12.4f} {a.auc_int8:7.4f} {a.auc_fp32 - a.auc_int8:8.4f}"
        print(f"{key:6} {a.golden_dev:21.2e} {a.crops_dev:11.2e} ({a.crops:4}) {auc} "
              f"{sizes['fp32']:6.1f}→{sizes['int8']:5.1f} {sizes['quantize_s']:8.1f}s")  # fmt: skip
    tolerance = PARITY_TOLERANCES["int8"].p_fake
    print(f"\nparity gate at int8: calibrated P(fake) within {tolerance} of torch on the golden batch; "
          f"rebuild-engine: validation ROC-AUC at most {INT8_MAX_AUC_DROP} under the fp32 detector's")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "var" / "bench-int8", help="engine cache")
    parser.add_argument("--models", default="demo,b16", help="comma-separated, of: demo, b16")
    parser.add_argument("--batches", help=f"comma-separated batch sizes for every model (default {BATCHES})")
    parser.add_argument("--rounds", type=int, default=20, help="timed fp32+int8 rounds per batch size (default 20)")
    parser.add_argument("--time-budget", type=float, default=60.0, help="seconds of rounds per batch size (default 60)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads (default: all)")
    args = parser.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")] if args.batches else None
    load_at_start = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    torch.set_num_threads(args.threads)
    results = {key: bench(key, args) for key in args.models.split(",") if key}
    import onnxruntime

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nonnxruntime {onnxruntime.__version__} CPU, {args.threads} threads of {os.cpu_count()} "
          f"(load average at start {load_at_start}, at end {load})\n")  # fmt: skip
    print_report(results)


if __name__ == "__main__":
    main()
