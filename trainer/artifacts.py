"""How each backend's artifact is built from one export of the detector: a registry the build and the ``trainer``
command's ``--backend``/``--precision`` choices both read.

Importing this module stays light (no torch, no runtime): ``trainer --help`` builds its choices from it. Each
builder imports what it needs when it runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from deepsift.engines.registry import Registry

if TYPE_CHECKING:
    import torch

    from deepsift.engines.manifest import BackendSpec, BatchRange, OutputSpec

ONNX_ARTIFACT, TORCH_ARTIFACT, TENSORRT_ARTIFACT = "model.onnx", "model.pt2", "model.plan"
# Every precision an engine can be built in, widest first (engines.manifest.BackendSpec.precision; a tolerance for
# each in trainer.build.PARITY_TOLERANCES).
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


@dataclass(frozen=True)
class Exported:
    """One trace of the detector and its ONNX form, in the build's scratch folder."""

    program: torch.export.ExportedProgram
    spec: OutputSpec
    onnx: Path
    image_size: int
    batch: BatchRange


ArtifactBuilder = Callable[[Exported, str, Path | None], tuple[Path, "BackendSpec"]]


@dataclass(frozen=True)
class BackendBuild:
    """How one backend's artifact is built, the precisions it can be built in, whether it runs (and so is
    checked) on the GPU when there is one, and, by precision, how a reduced precision is made (recorded in the
    manifest's evaluation as ``quantization``)."""

    artifact: ArtifactBuilder
    precisions: tuple[str, ...]
    gpu: bool
    methods: Mapping[str, str] = field(default_factory=dict)


BACKEND_BUILDS: Registry[BackendBuild] = Registry("backend build")


def backend_build(
    name: str, precisions: tuple[str, ...], gpu: bool, methods: Mapping[str, str] | None = None
) -> Callable[[ArtifactBuilder], ArtifactBuilder]:
    """Register the decorated function as how backend ``name``'s artifact is built; a second one for a name is
    refused."""
    unknown = set(precisions) - set(PRECISIONS)
    if unknown:
        raise ValueError(f"backend build {name!r}: unknown precisions {sorted(unknown)}; known: {PRECISIONS}")

    def register(artifact: ArtifactBuilder) -> ArtifactBuilder:
        BACKEND_BUILDS.register(name)(BackendBuild(artifact, precisions, gpu, dict(methods or {})))
        return artifact

    return register


def buildable_precisions() -> list[str]:
    """The precisions some registered backend builds, widest first."""
    built = {p for name in BACKEND_BUILDS for p in BACKEND_BUILDS.get(name).precisions}
    return [p for p in PRECISIONS if p in built]


# ONNX Runtime runs the exported fp32 graph, or its int8 form (trainer.quantize), on CPU; torch runs any float
# precision (autocast) on CPU or CUDA; TensorRT builds any precision into its plan, on the GPU it will run on.
ONNXRUNTIME_INT8 = (
    "onnxruntime quantize_dynamic: MatMul/Gemm weights int8 symmetric per output channel, "
    "activations uint8 per batch; Conv and activation matmuls fp32"
)  # trainer.quantize says why


@backend_build("onnxruntime", precisions=("fp32", "int8"), gpu=False, methods={"int8": ONNXRUNTIME_INT8})
def _onnxruntime_artifact(exported: Exported, precision: str, timing_cache: Path | None) -> tuple[Path, BackendSpec]:
    import onnxruntime

    from deepsift.engines.manifest import BackendSpec
    from deepsift.trainer.export import ONNX_OPSET

    artifact = exported.onnx
    if precision == "int8":
        from deepsift.trainer.quantize import quantize_onnx

        (exported.onnx.parent / "int8").mkdir()
        artifact = quantize_onnx(exported.onnx, exported.onnx.parent / "int8" / ONNX_ARTIFACT)
    spec = BackendSpec(name="onnxruntime", version=onnxruntime.__version__, precision=precision, onnx_opset=ONNX_OPSET)
    return artifact, spec


@backend_build("torch", precisions=("fp32", "fp16", "bf16"), gpu=True)
def _torch_artifact(exported: Exported, precision: str, timing_cache: Path | None) -> tuple[Path, BackendSpec]:
    import torch

    from deepsift.engines.manifest import BackendSpec
    from deepsift.trainer.export import export_pt2

    path = export_pt2(exported.program, exported.spec, exported.onnx.with_name(TORCH_ARTIFACT))
    return path, BackendSpec(name="torch", version=torch.__version__, precision=precision)


@backend_build("tensorrt", precisions=("fp32", "fp16", "bf16", "int8"), gpu=True)
def _tensorrt_artifact(exported: Exported, precision: str, timing_cache: Path | None) -> tuple[Path, BackendSpec]:
    from deepsift.engines.manifest import BackendSpec
    from deepsift.trainer.export import ONNX_OPSET
    from deepsift.trainer.tensorrt_build import build_plan  # needs tensorrt only when a plan is built

    plan = exported.onnx.with_name(TENSORRT_ARTIFACT)
    info = build_plan(exported.onnx, plan, exported.batch, exported.image_size, precision, timing_cache)
    spec = BackendSpec(
        name="tensorrt",
        version=info.version,
        precision=precision,
        onnx_opset=ONNX_OPSET,
        gpu_compute_capability=info.compute_capability,
    )
    return plan, spec
