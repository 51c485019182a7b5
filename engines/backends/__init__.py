"""Inference backends behind one interface, chosen by the engine manifest's ``backend.name``.

A backend turns a float32 NCHW batch (a numpy array, or a torch tensor already on the backend's device)
into the engine's named outputs. Heavy runtimes (onnxruntime, torch CUDA, TensorRT) are imported inside
the loader, never at import time.
"""

from __future__ import annotations

from pathlib import Path

# Backends register themselves in BACKENDS on import; their runtimes load lazily, so these imports stay cheap.
from deepsift.engines.backends import ort, tensorrt, torch_backend  # noqa: F401
from deepsift.engines.backends.base import (
    BACKENDS,
    BackendLoader,
    BackendOptions,
    EngineOutputs,
    InferenceBackend,
    LoadedEngine,
)
from deepsift.engines.errors import EngineError
from deepsift.engines.manifest import EngineManifest, sha256_file

__all__ = [
    "BACKENDS",
    "BackendLoader",
    "BackendOptions",
    "EngineOutputs",
    "InferenceBackend",
    "LoadedEngine",
    "load_engine",
]


def load_engine(
    path: Path, threads: int = 0, verify: bool = True, options: BackendOptions | None = None
) -> LoadedEngine:
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
    options = options or BackendOptions(threads=threads)
    backend = BACKENDS.get(manifest.backend.name)(manifest, artifact, options)
    return LoadedEngine(manifest=manifest, backend=backend, path=Path(path))
