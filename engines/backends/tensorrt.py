"""TensorRT backend: a serialized plan (built by ``trainer.tensorrt_build``) run on the current CUDA device.

Written to the documented TensorRT 10 Python API and NOT verified here: no machine this project builds on can
import ``tensorrt``. What can run without it is tested on CPU: the plan compatibility check, dtype mapping,
input placement, and the error on a machine without TensorRT.

A plan is tied to the exact TensorRT version and the GPU compute capability that built it, so both are checked
against the manifest before deserialising; a mismatch asks the operator to rebuild the engine on this GPU type.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from deepsift.engines.backends.base import BACKENDS, BackendOptions
from deepsift.engines.errors import EngineError
from deepsift.engines.manifest import EngineManifest

REBUILD_HINT = "run `trainer rebuild-engine` on this GPU type"

# TensorRT DataType member names → the torch dtype that holds them. Input and outputs of our engines are FLOAT
# (or HALF/BF16 for an engine exported with reduced-precision IO).
TORCH_DTYPES: dict[str, torch.dtype] = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT8": torch.int8,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "BOOL": torch.bool,
    "UINT8": torch.uint8,
}


def tensorrt_missing(reason: str) -> EngineError:
    """The error for a machine without TensorRT: what to do, not just which import failed."""
    return EngineError(
        f"TensorRT is not installed here ({reason}). Install the `gpu` extra (pip install 'deepsift[gpu]') on a "
        "machine with an NVIDIA GPU, or build an onnxruntime or torch engine instead."
    )


def require_tensorrt() -> ModuleType:
    """Import ``tensorrt``, or raise ``tensorrt_missing``."""
    try:
        import tensorrt
    except ImportError as e:
        raise tensorrt_missing(str(e)) from e
    return tensorrt


def installed_tensorrt_version() -> str | None:
    try:
        import tensorrt
    except ImportError:
        return None
    return str(tensorrt.__version__)


def compute_capability_string(capability: tuple[int, int]) -> str:
    """``torch.cuda.get_device_capability()`` form (9, 0) → the manifest's "9.0"."""
    major, minor = capability
    return f"{int(major)}.{int(minor)}"


def running_compute_capability(device: torch.device | None = None) -> str | None:
    """The compute capability of ``device`` (default: the current CUDA device), or None without a usable GPU."""
    if not torch.cuda.is_available():
        return None
    return compute_capability_string(torch.cuda.get_device_capability(device))


def cuda_device(requested: str) -> torch.device:
    """The CUDA device a plan runs on: the daemon's ``device`` when it names one (``cuda:1``), else the current."""
    if requested.startswith("cuda") and ":" in requested:
        return torch.device(requested)
    return torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)


def check_plan_compatible(
    manifest: EngineManifest, tensorrt_version: str | None, compute_capability: str | None
) -> None:
    """Refuse a plan this machine cannot run, before TensorRT sees it (a mismatched plan fails deep inside
    deserialisation, or worse, loads and misbehaves). ``None`` means: not installed / no CUDA GPU."""
    built_with, built_for = manifest.backend.version, manifest.backend.gpu_compute_capability
    if not built_for:
        raise EngineError(
            f"engine {manifest.name} records no GPU compute capability, which a TensorRT plan is tied to; "
            f"{REBUILD_HINT}"
        )
    if tensorrt_version is None:
        raise tensorrt_missing(f"engine {manifest.name} is a TensorRT plan")
    if compute_capability is None:
        raise EngineError(f"engine {manifest.name} is a TensorRT plan and needs an NVIDIA GPU; none is visible here")
    if tensorrt_version != built_with:
        raise EngineError(
            f"engine {manifest.name} was built with TensorRT {built_with}, but TensorRT {tensorrt_version} is "
            f"installed; a plan only loads in the TensorRT version that built it. {REBUILD_HINT.capitalize()} "
            f"(or install TensorRT {built_with})"
        )
    if compute_capability != built_for:
        raise EngineError(
            f"engine {manifest.name} was built for GPU compute capability {built_for}, but this GPU has "
            f"{compute_capability}; {REBUILD_HINT}"
        )


def torch_dtype(tensorrt_dtype_name: str) -> torch.dtype:
    """The torch dtype for a TensorRT ``DataType`` member name (``DataType.HALF.name`` → torch.float16)."""
    try:
        return TORCH_DTYPES[tensorrt_dtype_name]
    except KeyError:
        raise EngineError(f"TensorRT tensor type {tensorrt_dtype_name} has no torch equivalent here") from None


def device_input(pixels: Any, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``pixels`` as a contiguous ``dtype`` tensor on ``device``: a torch tensor that already is one is used as
    is (zero copy, e.g. from GPU preprocessing); anything else is copied there once."""
    if isinstance(pixels, torch.Tensor):
        if pixels.device == device and pixels.dtype == dtype and pixels.is_contiguous():
            return pixels
        return pixels.detach().to(device=device, dtype=dtype).contiguous()
    host = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
    return host.to(device=device, dtype=dtype).contiguous()


class TensorRtBackend:
    """One deserialised plan and one execution context; call ``run`` from one thread at a time."""

    def __init__(self, manifest: EngineManifest, artifact: Path, options: BackendOptions) -> None:
        self.device = cuda_device(options.device)
        check_plan_compatible(manifest, installed_tensorrt_version(), running_compute_capability(self.device))
        trt = require_tensorrt()
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        with torch.cuda.device(self.device):  # the plan's memory and context live on this device
            self.engine = self.runtime.deserialize_cuda_engine(artifact.read_bytes())
            self.context = self.engine.create_execution_context() if self.engine is not None else None
        if self.engine is None:
            raise EngineError(f"TensorRT could not deserialise {artifact} (see its log above); {REBUILD_HINT}")
        if self.context is None:
            raise EngineError(f"TensorRT could not create an execution context for {artifact} (out of GPU memory?)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in inputs]
        if inputs != [manifest.input_name] or not set(manifest.outputs.names()) <= set(self.output_names):
            raise EngineError(
                f"{artifact} has inputs {inputs} and outputs {self.output_names}; the manifest expects "
                f"{manifest.input_name!r} → {manifest.outputs.names()}"
            )
        self.input_name = manifest.input_name
        self.dtypes = {n: torch_dtype(self.engine.get_tensor_dtype(n).name) for n in names}
        self.batch = manifest.batch

    def run(self, pixels: Any, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        with torch.cuda.device(self.device):
            return self._run(pixels, outputs)

    def _run(self, pixels: Any, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        n = int(pixels.shape[0])
        if not self.batch.min <= n <= self.batch.max:
            raise ValueError(f"batch of {n} is outside the plan's profile {self.batch.min}..{self.batch.max}")
        x = device_input(pixels, self.device, self.dtypes[self.input_name])
        if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
            raise EngineError(f"TensorRT refused input shape {tuple(x.shape)} for {self.input_name!r}")
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        found = {}  # every output needs an address, wanted or not
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            found[name] = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
            self.context.set_tensor_address(name, found[name].data_ptr())
        if not self.context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise EngineError("TensorRT failed to enqueue the batch (see its log above)")
        # .cpu() waits on the current stream, which is the one the plan ran on
        return {name: found[name].float().cpu().numpy() for name in outputs}


BACKENDS.register("tensorrt")(TensorRtBackend)
