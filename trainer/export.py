"""Trace a detector once with a dynamic batch axis, and write that trace as ONNX and as a torch ``.pt2`` program.

The traced module gives every output the detector makes for its task (``logit``; ``class_logits`` for multiclass
tasks; ``mask_logits`` N×1×H×W for tasks with masks), in ``OutputSpec.names()`` order. Detectors with parts that
are constant at inference (SD²'s text labels) offer ``for_export()``, a form with those parts folded into buffers.
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deepsift.engines.backends.torch_backend import save_pt2
from deepsift.engines.manifest import BatchRange, OutputSpec
from deepsift.engines.models.outputs import DetectorOutput
from deepsift.engines.recipes import TaskSpec

ONNX_OPSET = 18
INPUT_NAME = "pixels"
OUTPUT_NAME = "logit"  # the fake logit, the one output every engine has
CLASS_LOGITS, MASK_LOGITS = "class_logits", "mask_logits"


def output_spec(task: TaskSpec) -> OutputSpec:
    """The outputs an engine of this task has."""
    return OutputSpec(
        fake_logit=OUTPUT_NAME,
        class_logits=CLASS_LOGITS if task.kind == "multiclass" else None,
        mask_logits=MASK_LOGITS if task.masks else None,
    )


class ExportedOutputs(nn.Module):
    """pixels → the tuple of ``spec``'s outputs, read from the detector's ``outputs()`` (or its ``for_export()``
    form's). Masks are given N×1×H×W, as the manifest describes them."""

    def __init__(self, detector: nn.Module, spec: OutputSpec) -> None:
        super().__init__()
        detector = detector.eval()
        self.detector = detector.for_export() if hasattr(detector, "for_export") else detector
        self.spec = spec

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return spec_outputs(self.detector.outputs(pixels), self.spec)


def spec_outputs(out: DetectorOutput, spec: OutputSpec) -> tuple[torch.Tensor, ...]:
    """The tensors ``spec`` names, in its order, shaped as the manifest describes them."""
    found = [out.fake_logit.reshape(-1)]
    if spec.class_logits is not None:
        found.append(out.class_logits)
    if spec.mask_logits is not None:
        mask = out.mask_logits
        found.append(mask.reshape(mask.shape[0], 1, mask.shape[-2], mask.shape[-1]))
    return tuple(found)


@contextlib.contextmanager
def without_grad_checkpointing(model: nn.Module) -> Iterator[None]:
    """Turn activation checkpointing off for the duration: open_clip and timm blocks checkpoint whenever their
    ``grad_checkpointing`` flag is set, even in eval mode, and ``torch.export`` cannot trace the checkpoint."""
    flagged = [m for m in model.modules() if getattr(m, "grad_checkpointing", False) is True]
    for module in flagged:
        module.grad_checkpointing = False
    try:
        yield
    finally:
        for module in flagged:
            module.grad_checkpointing = True


def trace(detector: nn.Module, spec: OutputSpec, image_size: int, batch: BatchRange) -> torch.export.ExportedProgram:
    """One ``torch.export`` trace of the detector's outputs whose batch axis accepts any size in ``batch``."""
    example = torch.zeros(max(batch.min, 2), 3, image_size, image_size)
    dim = torch.export.Dim("batch", min=1, max=max(batch.max, 2))
    # strict (TorchDynamo) tracing: the non-strict tracer turns ``len(pixels)`` (seed 001's prompt expand) into a
    # constant batch size, which breaks the dynamic axis.
    with warnings.catch_warnings(), torch.no_grad(), without_grad_checkpointing(detector):
        warnings.simplefilter("ignore")
        return torch.export.export(ExportedOutputs(detector, spec), (example,), dynamic_shapes=({0: dim},), strict=True)


def export_onnx(program: torch.export.ExportedProgram, spec: OutputSpec, path: Path, opset: int = ONNX_OPSET) -> Path:
    """Write the traced program as ONNX with input ``pixels`` and the outputs named by ``spec``."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(
            program,
            input_names=[INPUT_NAME],
            output_names=spec.names(),
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
    onnx_program.save(str(path))
    return path


def export_pt2(program: torch.export.ExportedProgram, spec: OutputSpec, path: Path) -> Path:
    """Write the traced program as the torch backend's self-contained archive (graph, weights, names)."""
    return save_pt2(program, path, INPUT_NAME, spec.names())


def reference_outputs(detector: nn.Module, spec: OutputSpec, golden: torch.Tensor) -> dict[str, np.ndarray]:
    """What the detector itself (eager torch, fp32, CPU, unfolded) gives on ``golden``: the parity reference."""
    with torch.no_grad():
        found = spec_outputs(detector.eval().outputs(golden), spec)
    return {name: t.float().numpy() for name, t in zip(spec.names(), found, strict=True)}


def golden_batch(image_size: int, n: int = 4, seed: int = 0) -> torch.Tensor:
    """A fixed pseudo-random batch in the normalised input range, for parity checks."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, image_size, image_size, generator=generator) * 2 - 1


def weights_sha256(model: nn.Module) -> str:
    """Hash of the parameters and buffers, by name, independent of how they were saved."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
