"""ONNX Runtime backend: the portable engine, on CPU (or CUDA when onnxruntime-gpu is installed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engines.backends import BACKENDS
from engines.errors import EngineError
from engines.manifest import EngineManifest


class OnnxRuntimeBackend:
    def __init__(self, manifest: EngineManifest, artifact: Path, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(artifact), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own untyped errors for bad files
            raise EngineError(f"onnxruntime cannot load {artifact}: {e}") from e
        inputs = {i.name for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if manifest.input_name not in inputs or manifest.output_name not in outputs:
            raise EngineError(
                f"{artifact} has inputs {sorted(inputs)} and outputs {sorted(outputs)}; the manifest expects "
                f"{manifest.input_name!r} → {manifest.output_name!r}"
            )
        self.input_name, self.output_name = manifest.input_name, manifest.output_name

    def run(self, pixels: np.ndarray) -> np.ndarray:
        (logits,) = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(pixels, np.float32)})
        return np.asarray(logits, dtype=np.float32).reshape(len(pixels))


BACKENDS.register("onnxruntime")(OnnxRuntimeBackend)
