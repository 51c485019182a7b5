"""Build a TensorRT plan from our ONNX export: one optimisation profile over the engine's batch range.

Written to the documented TensorRT 10 Python API and NOT verified here: no machine this project builds on can
import ``tensorrt``. Everything decidable without TensorRT is a pure function tested on CPU: the profile shapes,
the precision flags, the ONNX input contract the profile relies on, and the timing-cache file handling.

Precision: ``fp32``; ``fp16`` and ``bf16`` set the builder flag and let TensorRT pick per layer (weak typing,
which TensorRT 10.12 deprecates and TensorRT 11 removes: a TensorRT 11 build is refused with that reason).
``int8`` is refused unless the ONNX graph is explicitly quantized (QuantizeLinear/DequantizeLinear nodes, e.g.
from NVIDIA ModelOpt): implicit calibration (``IInt8Calibrator``) is deprecated since TensorRT 10.1, and our
exporter writes no Q/DQ nodes, so an int8 engine needs that quantization step first.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from deepsift.engines.backends.tensorrt import require_tensorrt, running_compute_capability
from deepsift.engines.errors import EngineError
from deepsift.engines.manifest import BatchRange

# TensorRT BuilderFlag member names per manifest precision; int8 keeps FP16 on for the layers Q/DQ leave unquantized.
PRECISION_FLAGS: dict[str, tuple[str, ...]] = {
    "fp32": (),
    "fp16": ("FP16",),
    "bf16": ("BF16",),
    "int8": ("FP16", "INT8"),
}
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
# The ONNX opsets TensorRT 10.0's parser reads (onnx-tensorrt docs/operators.md); later 10.x releases read more.
TENSORRT_OPSETS = range(9, 21)

Shape = tuple[int, int, int, int]


@dataclass(frozen=True)
class ProfileShapes:
    """The min/opt/max input shapes of the plan's one optimisation profile."""

    min: Shape
    opt: Shape
    max: Shape


@dataclass(frozen=True)
class TensorRtBuildInfo:
    """What the manifest must record about a plan: it only loads in this TensorRT version on this GPU type."""

    version: str
    compute_capability: str


def profile_shapes(batch: BatchRange, image_size: int) -> ProfileShapes:
    """N×3×S×S at the batch range's min, opt and max."""
    if image_size < 1:
        raise ValueError(f"image size must be positive, got {image_size}")
    return ProfileShapes(*((n, 3, image_size, image_size) for n in (batch.min, batch.opt, batch.max)))


def builder_flag_names(precision: str) -> tuple[str, ...]:
    """The ``tensorrt.BuilderFlag`` members a precision needs (none for fp32)."""
    try:
        return PRECISION_FLAGS[precision]
    except KeyError:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISION_FLAGS)}") from None


def graph_input_dims(model: onnx.ModelProto, input_name: str) -> tuple[int | str, ...]:
    """The ONNX input's dims: ints where fixed, the symbol (or "?") where dynamic; it must be float32."""
    by_name = {i.name: i for i in model.graph.input}
    if input_name not in by_name:
        raise EngineError(f"the ONNX graph has no input {input_name!r}; its inputs are {sorted(by_name)}")
    tensor = by_name[input_name].type.tensor_type
    if tensor.elem_type != onnx.TensorProto.FLOAT:
        kind = onnx.TensorProto.DataType.Name(tensor.elem_type)
        raise EngineError(f"ONNX input {input_name!r} is {kind}; the engines feed float32 pixels")
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim)


def check_profile_fits_graph(shapes: ProfileShapes, dims: tuple[int | str, ...]) -> None:
    """Refuse a profile TensorRT would reject: wrong rank, a fixed dim it contradicts, or a batch range over a
    fixed batch dim (an export without a dynamic batch axis)."""
    if len(dims) != len(shapes.min):
        raise EngineError(f"ONNX input has rank {len(dims)} ({dims}); the profile is N×3×S×S")
    for axis, dim in enumerate(dims):
        sizes = {shapes.min[axis], shapes.opt[axis], shapes.max[axis]}
        if isinstance(dim, int) and sizes != {dim}:
            what = "batch" if axis == 0 else f"axis {axis}"
            raise EngineError(f"ONNX input {what} is fixed at {dim}, but the profile asks for {sorted(sizes)}")


def check_graph_for_tensorrt(model: onnx.ModelProto) -> int:
    """The graph's ONNX opset, refusing what TensorRT's parser cannot take without plugins: an opset outside
    ``TENSORRT_OPSETS``, or nodes from a custom-op domain. A missing opset import is a broken file."""
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    if "ai.onnx" not in opsets:
        raise EngineError("the ONNX graph imports no standard opset")
    opset = opsets["ai.onnx"]
    if opset not in TENSORRT_OPSETS:
        raise EngineError(
            f"ONNX opset {opset} is outside {TENSORRT_OPSETS.start}..{TENSORRT_OPSETS.stop - 1}, "
            "the opsets TensorRT 10 reads"
        )
    custom = sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    if custom:
        raise EngineError(f"the ONNX graph uses custom ops TensorRT has no parser for: {', '.join(custom)}")
    return opset


def is_explicitly_quantized(model: onnx.ModelProto) -> bool:
    """Whether the graph carries Q/DQ nodes, the only int8 TensorRT builds without a (deprecated) calibrator."""
    return any(node.op_type in QDQ_OPS for node in model.graph.node)


def check_precision(precision: str, model: onnx.ModelProto) -> tuple[str, ...]:
    """The builder flags for ``precision``, refusing int8 for a graph without explicit quantization."""
    flags = builder_flag_names(precision)
    if precision == "int8" and not is_explicitly_quantized(model):
        raise EngineError(
            "int8 needs an explicitly quantized ONNX graph (QuantizeLinear/DequantizeLinear nodes, e.g. from NVIDIA "
            "ModelOpt); this export has none, and TensorRT's implicit int8 calibration is deprecated since 10.1. "
            "Build fp16 or bf16, or quantize the ONNX first."
        )
    return flags


def read_timing_cache(path: Path | None) -> bytes:
    """The saved timing cache, or empty bytes (a new cache) when there is none yet."""
    return path.read_bytes() if path is not None and path.exists() else b""


def write_timing_cache(path: Path, data: bytes) -> None:
    """Replace the cache file atomically, so a crashed build never leaves half a cache for the next one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def build_plan(
    onnx_path: Path,
    plan_path: Path,
    batch: BatchRange,
    image_size: int,
    precision: str,
    timing_cache: Path | None,
    input_name: str = "pixels",
    *,
    workspace_bytes: int | None = None,
) -> TensorRtBuildInfo:
    """Build ``plan_path`` from ``onnx_path`` on this machine's GPU; reuse and update ``timing_cache`` if given.

    ``workspace_bytes`` caps the scratch memory TensorRT may use per layer (default: the whole GPU)."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    shapes = profile_shapes(batch, image_size)
    check_graph_for_tensorrt(model)
    check_profile_fits_graph(shapes, graph_input_dims(model, input_name))
    flags = check_precision(precision, model)
    del model
    trt = require_tensorrt()
    capability = running_compute_capability()
    if capability is None:
        raise EngineError("no CUDA GPU is visible; a TensorRT plan is built on the GPU type it will run on")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, parser = _parse_onnx(trt, builder, logger, onnx_path)  # the parser owns the weights until the build
    config = _builder_config(trt, builder, flags, workspace_bytes)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, shapes.min, shapes.opt, shapes.max)
    config.add_optimization_profile(profile)
    _attach_timing_cache(config, timing_cache)
    plan = builder.build_serialized_network(network, config)
    del parser
    if plan is None:
        raise EngineError(f"TensorRT {trt.__version__} could not build a plan from {onnx_path} (see its log above)")
    with open(plan_path, "wb") as f:
        f.write(plan)
    if timing_cache is not None:
        write_timing_cache(timing_cache, bytes(config.get_timing_cache().serialize()))
    return TensorRtBuildInfo(version=str(trt.__version__), compute_capability=capability)


def _parse_onnx(trt: Any, builder: Any, logger: Any, onnx_path: Path) -> tuple[Any, Any]:
    """An explicit-batch network (the only kind in TensorRT 10) from the ONNX file; parser errors in full."""
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n".join(f"  {parser.get_error(i)}" for i in range(parser.num_errors))
        raise EngineError(f"TensorRT's ONNX parser rejected {onnx_path}:\n{errors}")
    return network, parser


def _builder_config(trt: Any, builder: Any, flags: tuple[str, ...], workspace_bytes: int | None) -> Any:
    config = builder.create_builder_config()
    if workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    for name in flags:
        flag = getattr(trt.BuilderFlag, name, None)
        if flag is None:  # TensorRT 11 removed the weak-typing precision flags
            raise EngineError(
                f"TensorRT {trt.__version__} has no BuilderFlag.{name}; build this precision with TensorRT 10"
            )
        config.set_flag(flag)
    return config


def _attach_timing_cache(config: Any, path: Path | None) -> None:
    """Start from the saved cache; one from another GPU or TensorRT version is dropped for a fresh one."""
    cache = config.create_timing_cache(read_timing_cache(path))
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        warnings.warn(f"timing cache {path} does not match this GPU/TensorRT; starting a new one", stacklevel=3)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
