"""Inference backends behind one interface, chosen by the engine manifest's ``backend.name``.

A backend turns a float32 NCHW batch into the engine's logits. Heavy runtimes (onnxruntime, later
TensorRT) are imported inside the loader, never at import time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from engines.errors import EngineError
from engines.manifest import EngineManifest, sha256_file
from engines.registry import Registry


class InferenceBackend(Protocol):
    def run(self, pixels: np.ndarray) -> np.ndarray:
        """float32 N×3×H×W (N within the manifest's batch range) → N logits."""
        ...


BackendLoader = Callable[[EngineManifest, Path, int], InferenceBackend]
BACKENDS: Registry[BackendLoader] = Registry("backend")


@dataclass(frozen=True)
class LoadedEngine:
    """A manifest and a ready backend; ``logits`` splits any batch into the engine's batch range."""

    manifest: EngineManifest
    backend: InferenceBackend
    path: Path

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        size = self.manifest.input.size
        if pixels.ndim != 4 or pixels.shape[1:] != (3, size, size):
            raise ValueError(f"engine {self.manifest.name} wants N×3×{size}×{size}, got {pixels.shape}")
        step = self.manifest.batch.max
        chunks = [self.backend.run(pixels[i : i + step]) for i in range(0, len(pixels), step)]
        return np.concatenate(chunks) if chunks else np.zeros((0,), dtype=np.float32)

    def p_fake(self, pixels: np.ndarray) -> np.ndarray:
        calibration = self.manifest.calibration
        return np.array([calibration.p_fake(float(z)) for z in self.logits(pixels)], dtype=np.float64)


def load_engine(path: Path, threads: int = 0, verify: bool = True) -> LoadedEngine:
    """Load the engine in folder ``path``; refuse an artifact whose hash differs from its manifest."""
    try:
        manifest = EngineManifest.read(path)
    except (OSError, ValueError) as e:  # missing, unreadable or invalid manifest (pydantic errors are ValueErrors)
        raise EngineError(f"no valid engine manifest in {path}: {e}") from e
    if manifest.backend.name not in BACKENDS:
        raise EngineError(f"engine {manifest.name} needs backend {manifest.backend.name!r}, which is not available")
    artifact = Path(path) / manifest.artifact
    if not artifact.exists():
        raise EngineError(f"engine artifact {artifact} is missing")
    if verify and sha256_file(artifact) != manifest.artifact_sha256:
        raise EngineError(f"{artifact} does not match the sha256 in its manifest; rebuild or restore the engine")
    backend = BACKENDS.get(manifest.backend.name)(manifest, artifact, threads)
    return LoadedEngine(manifest=manifest, backend=backend, path=Path(path))


# Backends register themselves on import; their runtimes load lazily, so this import stays cheap.
from engines.backends import ort  # noqa: E402, F401
