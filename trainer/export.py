"""Export a detector to ONNX with a dynamic batch axis, and check the export against torch."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engines.manifest import BatchRange

ONNX_OPSET = 18
INPUT_NAME, OUTPUT_NAME = "pixels", "logit"


def export_onnx(model: nn.Module, image_size: int, path: Path, batch: BatchRange, opset: int = ONNX_OPSET) -> Path:
    """Write ``model`` (pixels → logits) as ONNX whose batch axis accepts any size in ``batch``."""
    model = model.eval()
    example = torch.zeros(batch.min if batch.min > 1 else 2, 3, image_size, image_size)
    dim = torch.export.Dim("batch", min=1, max=max(batch.max, 2))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=({0: dim},),
            verbose=False,
        )
    program.save(str(path))
    return path


def max_abs_difference(model: nn.Module, onnx_path: Path, golden: torch.Tensor) -> float:
    """Largest |torch − ONNX Runtime| logit difference on a fixed batch: the export's parity figure."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model.eval()(golden).numpy()
    (actual,) = session.run([OUTPUT_NAME], {INPUT_NAME: golden.numpy()})
    return float(np.abs(actual.reshape(expected.shape) - expected).max())


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
