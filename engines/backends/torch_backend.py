"""torch backend: a ``torch.export`` program (``model.pt2``) run by torch — the verified GPU path.

On CUDA it runs in the manifest's precision (fp16 or bf16 under autocast, or fp32); on CPU the same code runs in
fp32 or bf16, which is how CI checks it. Autocast rather than cast weights: one artifact serves every precision,
and the ops autocast keeps in fp32 (softmax, layer norm, logsumexp) stay there. A torch tensor already on the
device is used as it is — GPU preprocessing hands its batch over with no host copy.

The archive is self-contained (graph and weights) and carries its input and output names, checked against the
manifest at load; its sha256 is checked by ``load_engine`` like any artifact.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepsift.engines.backends.base import BACKENDS, BackendOptions
from deepsift.engines.errors import EngineError
from deepsift.engines.manifest import EngineManifest

NAMES_FILE = "deepsift_io.json"  # extra file inside the archive: {"input": name, "outputs": [names]}
AUTOCAST_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}  # fp32 runs without autocast


def save_pt2(program: Any, path: Path, input_name: str, output_names: Sequence[str]) -> Path:
    """Write a ``torch.export.ExportedProgram`` (pixels → tuple of outputs) as an artifact this backend loads."""
    import torch

    names = json.dumps({"input": input_name, "outputs": list(output_names)})
    torch.export.save(program, path, extra_files={NAMES_FILE: names})
    return path


def drop_dtype_assertions(module: Any) -> None:
    """Remove the trace's ``_assert_tensor_metadata`` checks (each ``.float()`` in the model records that its input
    was float32 when traced). Under autocast those inputs are fp16/bf16, and the checks, which compute nothing,
    would refuse them."""
    import torch

    assertion = torch.ops.aten._assert_tensor_metadata.default
    for node in list(module.graph.nodes):
        if node.op == "call_function" and node.target is assertion:
            module.graph.erase_node(node)
    module.recompile()


class TorchBackend:
    """``compile_cuda`` wraps the module in ``torch.compile(mode="reduce-overhead")`` (CUDA graphs) on CUDA only;
    it is off by default, and not exercised by CI (no GPU)."""

    def __init__(
        self, manifest: EngineManifest, artifact: Path, options: BackendOptions, *, compile_cuda: bool = False
    ) -> None:
        import torch
        from torch.export.passes import move_to_device_pass

        precision = manifest.backend.precision
        if precision != "fp32" and precision not in AUTOCAST_DTYPES:
            raise EngineError(f"engine {manifest.name}: the torch backend runs fp32, fp16 or bf16, not {precision}")
        self.device = torch.device(options.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise EngineError(f"engine {manifest.name} asks for {options.device}, but torch sees no CUDA device")
        if options.threads > 0:
            torch.set_num_threads(options.threads)  # process-wide: torch has no per-module thread pool
        extra = {NAMES_FILE: ""}
        try:
            program = torch.export.load(artifact, extra_files=extra)
            names = json.loads(extra[NAMES_FILE])
        except Exception as e:  # torch raises assorted errors for a file that is not a readable archive
            raise EngineError(f"torch cannot load {artifact} as an exported program: {e}") from e
        expected = manifest.outputs.names()
        if names.get("input") != manifest.input_name or not set(expected) <= set(names.get("outputs", [])):
            raise EngineError(
                f"{artifact} maps {names.get('input')!r} → {names.get('outputs')}; the manifest expects "
                f"{manifest.input_name!r} → {expected}"
            )
        self.output_names: list[str] = names["outputs"]
        program = move_to_device_pass(program, self.device)  # params, buffers and constants baked into the graph
        self.module = program.module()
        dtype = AUTOCAST_DTYPES.get(precision)
        self.autocast_dtype = None if dtype is None else getattr(torch, dtype)
        if self.autocast_dtype is not None:
            drop_dtype_assertions(self.module)
        if compile_cuda and self.device.type == "cuda":
            self.module = torch.compile(self.module, mode="reduce-overhead", dynamic=False)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        import torch

        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def run(self, pixels: Any, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        import torch

        if isinstance(pixels, np.ndarray):
            pixels = torch.from_numpy(np.ascontiguousarray(pixels, np.float32))
        pixels = pixels.to(self.device, torch.float32)  # the same tensor, no copy, when it is already there as fp32
        with torch.inference_mode(), self._autocast():
            found = dict(zip(self.output_names, self.module(pixels), strict=True))
        return {name: found[name].float().cpu().numpy() for name in outputs}


BACKENDS.register("torch")(TorchBackend)
