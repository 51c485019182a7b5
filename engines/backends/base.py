"""The backend protocol and registry: what every backend module implements and registers itself in.

Kept apart from ``engines.backends`` (which loads engines and imports every backend so they register), so a
backend module imports this one and nothing imports in a circle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from deepsift.engines.manifest import EngineManifest
from deepsift.engines.registry import Registry


class InferenceBackend(Protocol):
    def run(self, pixels: Any, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """float32 N×3×H×W (N within the manifest's batch range) → the named outputs as float32 numpy arrays."""
        ...


@dataclass(frozen=True)
class BackendOptions:
    """How the daemon or a benchmark wants a backend run; the manifest says what the artifact is."""

    threads: int = 0  # CPU threads; 0 = the runtime's default
    device: str = "cpu"  # torch device for the torch backend; TensorRT always runs on the current CUDA device


BackendLoader = Callable[[EngineManifest, Path, BackendOptions], InferenceBackend]
BACKENDS: Registry[BackendLoader] = Registry("backend")


@dataclass(frozen=True)
class EngineOutputs:
    """One batch's outputs: ``fake_logit`` (N); ``class_logits`` (N×C) and ``mask_logits`` (N×H×W) where the
    engine makes them and they were asked for."""

    fake_logit: np.ndarray
    class_logits: np.ndarray | None = None
    mask_logits: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.fake_logit)

    def slice(self, start: int, stop: int) -> EngineOutputs:
        return EngineOutputs(
            *(None if a is None else a[start:stop] for a in (self.fake_logit, self.class_logits, self.mask_logits))
        )


@dataclass(frozen=True)
class LoadedEngine:
    """A manifest and a ready backend; ``run`` splits any batch into the engine's batch range."""

    manifest: EngineManifest
    backend: InferenceBackend
    path: Path

    def run(self, pixels: Any, masks: bool = False) -> EngineOutputs:
        """All outputs for ``pixels`` (numpy or torch, N×3×S×S); mask logits only when ``masks`` is asked."""
        size = self.manifest.input.size
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, size, size):
            raise ValueError(f"engine {self.manifest.name} wants N×3×{size}×{size}, got {tuple(pixels.shape)}")
        spec = self.manifest.outputs
        wanted = [spec.fake_logit] + [n for n in (spec.class_logits, spec.mask_logits if masks else None) if n]
        step = self.manifest.batch.max
        chunks = [self.backend.run(pixels[i : i + step], wanted) for i in range(0, len(pixels), step)]

        def joined(name: str | None, shape: tuple[int, ...]) -> np.ndarray | None:
            if name is None or name not in wanted:
                return None
            if not chunks:
                return np.zeros((0, *shape), dtype=np.float32)
            return np.concatenate([np.asarray(c[name], dtype=np.float32).reshape(-1, *shape) for c in chunks])

        n_classes = len(self.manifest.task.class_names)
        return EngineOutputs(
            fake_logit=joined(spec.fake_logit, ()),  # type: ignore[arg-type]
            class_logits=joined(spec.class_logits, (n_classes,)),
            mask_logits=joined(spec.mask_logits, (size, size)),
        )

    def logits(self, pixels: Any) -> np.ndarray:
        return self.run(pixels).fake_logit

    def p_fake(self, pixels: Any) -> np.ndarray:
        return self.manifest.calibration.p_fake_array(self.logits(pixels))
