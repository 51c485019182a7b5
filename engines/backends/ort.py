"""ONNX Runtime backend: the portable engine, on CPU (or CUDA when onnxruntime-gpu is installed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepsift.engines.backends.base import BACKENDS, BackendOptions
from deepsift.engines.errors import EngineError
from deepsift.engines.manifest import EngineManifest


class OnnxRuntimeBackend:
    def __init__(self, manifest: EngineManifest, artifact: Path, options: BackendOptions) -> None:
        import onnxruntime as ort

        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = options.threads
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(artifact), session_options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own untyped errors for bad files
            raise EngineError(f"onnxruntime cannot load {artifact}: {e}") from e
        inputs = {i.name for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        expected = manifest.outputs.names()
        if manifest.input_name not in inputs or not set(expected) <= outputs:
            raise EngineError(
                f"{artifact} has inputs {sorted(inputs)} and outputs {sorted(outputs)}; the manifest expects "
                f"{manifest.input_name!r} → {expected}"
            )
        self.input_name = manifest.input_name

    def run(self, pixels: Any, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        if not isinstance(pixels, np.ndarray):  # a torch tensor from GPU preprocessing
            pixels = pixels.detach().cpu().numpy()
        found = self.session.run(list(outputs), {self.input_name: np.ascontiguousarray(pixels, np.float32)})
        return dict(zip(outputs, found, strict=True))


BACKENDS.register("onnxruntime")(OnnxRuntimeBackend)
