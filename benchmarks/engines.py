"""Engine-only throughput per backend and batch size, for the SigLIP-2 detectors with random weights.

Models: ViT-B-16-SigLIP2 at 224 (recipe siglip2-binary-b16-224) and ViT-L-16-SigLIP2 at 384
(siglip2-binary-l16-384), built from their recipes without pretrained weights (throughput does not depend on
the weights). Each cell times one backend on a fixed random batch of one size, after one warm-up run; images/s
is the batch size over the median time of the timed runs.

- CPU: ``onnxruntime`` (an InferenceSession on the exported ONNX, CPU provider) and ``torch`` (eager, fp32).
- NVIDIA GPU, when torch sees one: ``torch-cuda`` (the model in fp16, CUDA-synchronised timing) and ``tensorrt``
  (an fp16 plan built from the same ONNX by trainer.tensorrt_build, run by the tensorrt backend), where
  ``tensorrt`` imports.

Model FLOP utilisation (MFU) = FLOPs per image (counted by torch's FlopCounterMode on one forward) × images/s,
divided by the dense matmul rate measured on the same device in this run: fp16 8192² matmuls on the GPU; on the
CPU, fp32 2048² matmuls with the same thread count, the faster of torch's and ONNX Runtime's, the best sampled
before each CPU cell and at the start and end. On a CPU shared with other work, MFU is only as good as that peak
(the load average is printed).

The backends of one device take turns at each batch size. A cell whose predicted time (warm-up plus one run, from
the previous batch size) exceeds --time-budget is printed as "skipped: over budget"; within a cell, timed runs
stop at --iters or at the budget, whichever comes first.

    .venv/bin/python benchmarks/engines.py                                  # CPU defaults (~10 min on 2 cores)
    .venv/bin/python benchmarks/engines.py --models b16 --batches 1,8 --iters 5
    .venv/bin/python benchmarks/engines.py --backends torch-cuda,tensorrt  # on an NVIDIA GPU
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deepsift.engines.manifest import BatchRange  # noqa: E402
from deepsift.engines.models import build_detector  # noqa: E402
from deepsift.engines.recipes import Recipe, load_recipe  # noqa: E402
from deepsift.trainer.export import INPUT_NAME, OUTPUT_NAME, export_onnx, output_spec, trace  # noqa: E402

MODELS = {"b16": "siglip2-binary-b16-224", "l16": "siglip2-binary-l16-384"}
CPU_BATCHES = {"b16": (1, 8, 32), "l16": (1, 8)}  # what 2 CPU cores get through in ~10 minutes
GPU_BATCHES = (1, 8, 32, 128)
CPU_BACKENDS, GPU_BACKENDS = ("onnxruntime", "torch"), ("torch-cuda", "tensorrt")
PRECISION = {"onnxruntime": "fp32", "torch": "fp32", "torch-cuda": "fp16", "tensorrt": "fp16"}

RunBatch = Callable[[], None]  # runs one prepared batch to completion (synchronised)
Prepare = Callable[[int], RunBatch]  # batch size → a runner for a fixed random batch of that size


@dataclass(frozen=True)
class Cell:
    model: str
    backend: str
    batch: int
    images_per_s: float | None = None
    ms_per_batch: float | None = None
    runs: int = 0
    note: str = ""


def count_flops(model: nn.Module, size: int) -> float:
    """FLOPs of one image's forward (matmuls, convolutions, attention), as torch counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


def best_time(run: Callable[[], object], rounds: int) -> float:
    run()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def gpu_matmul_rate(n: int = 8192, per_round: int = 20) -> float:
    """Dense fp16 n×n matmul FLOP/s on the current GPU, best of 5 rounds: the peak GPU MFU is reported against."""
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.float16) for _ in range(2))

    def run() -> None:
        for _ in range(per_round):
            a @ b
        torch.cuda.synchronize()

    return 2 * n**3 * per_round / best_time(run, 5)


class CpuMatmulRate:
    """Dense fp32 n×n matmul FLOP/s on the CPU, the faster of torch's and ONNX Runtime's kernels (they differ a lot
    by CPU vendor). ``best`` is the highest rate sampled during the run: on a machine shared with other work, a
    single measurement reads the neighbours' load, not the CPU."""

    def __init__(self, threads: int, n: int = 2048) -> None:
        import onnxruntime as ort
        from onnx import TensorProto, helper

        self.n, self.best = n, 0.0
        self.a, self.b = (np.random.default_rng(i).standard_normal((n, n)).astype(np.float32) for i in range(2))
        spec = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [n, n]) for name in "abc"]
        graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul", spec[:2], spec[2:])
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        self.session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def sample(self, rounds: int = 3) -> float:
        ta, tb = torch.from_numpy(self.a), torch.from_numpy(self.b)
        feed = {"a": self.a, "b": self.b}
        fastest = min(best_time(lambda: ta @ tb, rounds), best_time(lambda: self.session.run(None, feed), rounds))
        self.best = max(self.best, 2 * self.n**3 / fastest)
        return self.best


def random_batch(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 3, size, size)).astype(np.float32)


def torch_cpu(model: nn.Module, size: int) -> Prepare:
    def prepare(n: int) -> RunBatch:
        x = torch.from_numpy(random_batch(n, size))

        def run() -> None:
            with torch.inference_mode():
                model(x)

        return run

    return prepare


def onnxruntime_cpu(onnx_path: Path, size: int, threads: int) -> Prepare:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

    def prepare(n: int) -> RunBatch:
        feed = {INPUT_NAME: random_batch(n, size)}

        def run() -> None:
            session.run([OUTPUT_NAME], feed)

        return run

    return prepare


def torch_cuda_fp16(model: nn.Module, size: int) -> Prepare:
    model = model.to("cuda", torch.float16)

    def prepare(n: int) -> RunBatch:
        x = torch.from_numpy(random_batch(n, size)).to("cuda", torch.float16)

        def run() -> None:
            with torch.inference_mode():
                model(x)
            torch.cuda.synchronize()

        return run

    return prepare


def tensorrt_fp16(recipe: Recipe, onnx_path: Path, batch: BatchRange, workdir: Path) -> Prepare:
    """Build an fp16 plan over ``batch`` and run it through the tensorrt backend (input already on the GPU)."""
    from deepsift.engines.backends import BackendOptions
    from deepsift.engines.backends.tensorrt import TensorRtBackend
    from deepsift.engines.manifest import BackendSpec, EngineManifest, sha256_file
    from deepsift.trainer.tensorrt_build import build_plan

    plan = workdir / f"{recipe.name}.plan"
    info = build_plan(onnx_path, plan, batch, recipe.input.size, "fp16", workdir / "timing.cache")
    manifest = EngineManifest(
        name=f"bench-{recipe.name}", recipe=recipe.name, recipe_sha256=recipe.sha256, detector=recipe.detector,
        task=recipe.task, input=recipe.input, batch=batch, outputs=output_spec(recipe.task),
        backend=BackendSpec(name="tensorrt", version=info.version, precision="fp16",
                            gpu_compute_capability=info.compute_capability),
        artifact=plan.name, artifact_sha256=sha256_file(plan), weights_sha256="0" * 64,
    )  # fmt: skip
    backend = TensorRtBackend(manifest, plan, BackendOptions())

    def prepare(n: int) -> RunBatch:
        x = torch.from_numpy(random_batch(n, recipe.input.size)).cuda()

        def run() -> None:
            backend.run(x, [OUTPUT_NAME])  # copies the logits to the host, so it returns when the batch is done

        return run

    return prepare


def time_cell(run: RunBatch, iters: int, budget_s: float) -> tuple[list[float], float]:
    """One warm-up run, then up to ``iters`` timed runs while the budget lasts (at least one)."""
    start = time.perf_counter()
    run()
    warm = time.perf_counter() - start
    times: list[float] = []
    while len(times) < iters and (not times or warm + sum(times) + times[-1] <= budget_s):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times, warm


def bench_backends(
    model: str,
    prepared: dict[str, Prepare],
    batches: list[int],
    args: argparse.Namespace,
    before_cell: Callable[[], object] = lambda: None,
) -> list[Cell]:
    """Cells for each backend at each batch size, smallest first, the backends taking turns at each size so that
    they meet similar load on a shared machine. A cell predicted (from the backend's previous size) to exceed the
    budget is skipped; one that fails (out of memory, say) ends that backend's larger sizes too."""
    cells: list[Cell] = []
    seconds_per_image: dict[str, float] = {}
    failed: set[str] = set()
    for n in batches:
        for backend, prepare in prepared.items():
            predicted = 2 * n * seconds_per_image[backend] if backend in seconds_per_image else 0.0
            if backend in failed or predicted > args.time_budget:
                note = "skipped: after a failure" if backend in failed else "skipped: over budget"
                cells.append(Cell(model, backend, n, note=f"{note} (~{predicted:.0f} s for warm-up + 1 run)"))
                continue
            before_cell()
            try:
                times, warm = time_cell(prepare(n), args.iters, args.time_budget)
            except Exception as e:  # out of (GPU) memory at this size, say: shown in the table, not a lost run
                cells.append(Cell(model, backend, n, note=f"failed: {str(e).splitlines()[0][:70]}"))
                failed.add(backend)
                continue
            per_batch = statistics.median(times)  # robust to a neighbour's burst on a shared machine
            seconds_per_image[backend] = per_batch / n
            over = "; over budget, fewer runs" if warm + sum(times) > args.time_budget else ""
            cell = Cell(model, backend, n, n / per_batch, 1e3 * per_batch, len(times), f"warm-up {warm:.1f} s{over}")
            cells.append(cell)
            print(f"  {model} {backend} batch {n}: {cell.images_per_s:.2f} images/s", file=sys.stderr, flush=True)
    return cells


def bench_model(
    key: str, batches: list[int], args: argparse.Namespace, workdir: Path, cpu_rate: CpuMatmulRate
) -> tuple[list[Cell], float]:
    recipe = load_recipe(MODELS[key])
    size = recipe.input.size
    torch.manual_seed(0)
    model = build_detector(recipe).eval()
    flops = count_flops(model, size)
    print(f"{key}: {recipe.name}, {flops / 1e9:.1f} GFLOPs/image", file=sys.stderr, flush=True)
    cuda = torch.cuda.is_available()
    onnx_path, batch_range = None, BatchRange(min=1, opt=min(32, max(batches)), max=max(batches))
    if "onnxruntime" in args.backends or ("tensorrt" in args.backends and cuda):
        start, spec = time.perf_counter(), output_spec(recipe.task)
        onnx_path = export_onnx(trace(model, spec, size, batch_range), spec, workdir / f"{recipe.name}.onnx")
        print(f"  exported {onnx_path.name} in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    cpu: dict[str, Prepare] = {}
    if "onnxruntime" in args.backends:
        cpu["onnxruntime"] = onnxruntime_cpu(onnx_path, size, args.threads)
    if "torch" in args.backends:
        cpu["torch"] = torch_cpu(model, size)
    cells = bench_backends(key, cpu, batches, args, before_cell=cpu_rate.sample)
    del cpu  # the ONNX Runtime session's weights
    gpu: dict[str, Prepare] = {}
    for backend in [b for b in GPU_BACKENDS if b in args.backends]:
        try:
            if not cuda:
                raise RuntimeError("torch.cuda.is_available() is False")
            if backend == "torch-cuda":
                gpu[backend] = torch_cuda_fp16(model, size)  # moves the model: CPU cells are done
            else:
                gpu[backend] = tensorrt_fp16(recipe, onnx_path, batch_range, workdir)
        except Exception as e:  # no GPU, no tensorrt, or a failed build: say so in the table
            cells.append(Cell(key, backend, 0, note=f"unavailable: {str(e).splitlines()[0][:90]}"))
    return cells + bench_backends(key, gpu, batches, args), flops


def print_table(cells: list[Cell], flops: dict[str, float], peaks: dict[str, float]) -> None:
    header = f"{'model':5} {'backend':12} {'prec':5} {'batch':>5} {'images/s':>9} {'ms/batch':>9} {'TFLOP/s':>8} "
    print(header + f"{'MFU':>6} {'runs':>4}  note")
    order = {b: i for i, b in enumerate(CPU_BACKENDS + GPU_BACKENDS)}
    for c in sorted(cells, key=lambda c: (list(MODELS).index(c.model), c.batch, order[c.backend])):
        device = "cuda" if c.backend in GPU_BACKENDS else "cpu"
        line = f"{c.model:5} {c.backend:12} {PRECISION[c.backend]:5} {c.batch or '-':>5} "
        if c.images_per_s is None:
            print(line + f"{'-':>9} {'-':>9} {'-':>8} {'-':>6} {'-':>4}  {c.note}")
            continue
        achieved = flops[c.model] * c.images_per_s
        mfu = f"{100 * achieved / peaks[device]:5.1f}%" if device in peaks else "-"
        print(
            line + f"{c.images_per_s:9.2f} {c.ms_per_batch:9.1f} {achieved / 1e12:8.3f} {mfu:>6} {c.runs:4}  {c.note}"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="b16,l16", help=f"comma-separated, of: {', '.join(MODELS)}")
    parser.add_argument(
        "--batches",
        help=f"comma-separated batch sizes for every model (default: {GPU_BATCHES} with a GPU, else per model "
        f"{CPU_BATCHES})",
    )
    default_backends = CPU_BACKENDS + (GPU_BACKENDS if cuda else ())
    parser.add_argument(
        "--backends",
        default=",".join(default_backends),
        help=f"comma-separated, of: {', '.join(CPU_BACKENDS + GPU_BACKENDS)} (default: {','.join(default_backends)})",
    )
    parser.add_argument("--iters", type=int, default=3, help="timed runs per cell after one warm-up (default 3)")
    parser.add_argument("--time-budget", type=float, default=120.0, help="seconds per cell (default 120)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads (default: all)")
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.backends = [b for b in args.backends.split(",") if b]
    for name, known in (("model", MODELS), ("backend", CPU_BACKENDS + GPU_BACKENDS)):
        unknown = set(getattr(args, f"{name}s")) - set(known)
        if unknown:
            parser.error(f"unknown {name}(s) {', '.join(sorted(unknown))}; choose from {', '.join(known)}")
    args.batches = [int(b) for b in args.batches.split(",")] if args.batches else None
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load_at_start = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    torch.set_num_threads(args.threads)
    import onnxruntime

    cpu_rate = CpuMatmulRate(args.threads)
    cpu_rate.sample(rounds=10)
    peaks = {}
    if torch.cuda.is_available():
        peaks["cuda"] = gpu_matmul_rate()
    cells: list[Cell] = []
    flops: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="deepsift-bench-") as tmp:
        for key in args.models:
            default = GPU_BATCHES if torch.cuda.is_available() else CPU_BATCHES[key]
            batches = sorted(args.batches or default)
            model_cells, flops[key] = bench_model(key, batches, args, Path(tmp), cpu_rate)
            cells += model_cells
    peaks["cpu"] = cpu_rate.sample(rounds=10)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"\ntorch {torch.__version__}, onnxruntime {onnxruntime.__version__}; {args.threads} CPU threads of "
        f"{os.cpu_count()} (load average at start {load_at_start}, at end {load}); GPU: {gpu}"
    )
    print("FLOPs/image: " + ", ".join(f"{k} {MODELS[k]} {v / 1e9:.1f} G" for k, v in flops.items()))
    kinds = {"cpu": "fp32 2048², best of torch and onnxruntime sampled through the run", "cuda": "fp16 8192²"}
    print(
        "measured matmul rate (MFU denominator): "
        + ", ".join(f"{d} {p / 1e12:.3f} TFLOP/s ({kinds[d]})" for d, p in peaks.items())
    )
    if not torch.cuda.is_available():
        print("GPU backends (torch-cuda fp16, tensorrt fp16) not run: torch.cuda.is_available() is False")
    print()
    print_table(cells, flops, peaks)


if __name__ == "__main__":
    main()
