"""The infer stage: engine outputs for a batch of prepared jobs, one engine call per engine and pixel placement,
a failure kept with the job that caused it."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import structlog

from deepsift.daemon.pipeline.records import PreparedMedia
from deepsift.engines.backends import EngineOutputs, LoadedEngine

log = structlog.get_logger(__name__)


def infer(
    engine: LoadedEngine | None, batch: Sequence[PreparedMedia], masks: bool = False
) -> list[EngineOutputs | Exception]:
    """The engine outputs for each job with pixels, in order: each job scored by the engine it was prepared for
    (``engine`` for jobs prepared without one), one engine batch per engine and pixel placement (host numpy, or
    a GPU tensor from DALI). Mask outputs come along when ``masks`` (some job asked) and the engine makes them.
    If a batch fails, its jobs are retried one by one, so a failure stays with the job that caused it."""
    ready = [p for p in batch if p.pixels is not None]
    groups: dict[tuple[int, str], list[int]] = {}
    for i, p in enumerate(ready):
        groups.setdefault((id(p.engine or engine), _placement(p.pixels)), []).append(i)
    scored: dict[int, EngineOutputs | Exception] = {}
    for indices in groups.values():
        scorer, pixels = ready[indices[0]].engine or engine, [ready[i].pixels for i in indices]
        scored.update(zip(indices, _score(scorer, pixels, masks), strict=True))
    return [scored[i] for i in range(len(ready))]


def _placement(pixels: Any) -> str:
    return "numpy" if isinstance(pixels, np.ndarray) else f"{type(pixels).__name__}:{getattr(pixels, 'device', '')}"


def _score(engine: LoadedEngine | None, ready: Sequence[Any], masks: bool) -> list[EngineOutputs | Exception]:
    """One engine batch for several jobs' pixels (all numpy, or all tensors on one device); job by job if it fails."""
    if engine is None:
        return [RuntimeError("no engine to score this job")] * len(ready)
    try:
        outputs = engine.run(_concatenate(ready), masks=masks)
        offsets = np.cumsum([0] + [len(p) for p in ready])
        return [outputs.slice(a, b) for a, b in itertools.pairwise(offsets)]
    except Exception:
        log.exception("batch_inference_failed", jobs=len(ready), engine=engine.manifest.name,
                      version=engine.manifest.version)  # fmt: skip
    results: list[EngineOutputs | Exception] = []
    for pixels in ready:
        try:
            results.append(engine.run(pixels, masks=masks))
        except Exception as e:
            results.append(e)
    return results


def _concatenate(pixels: Sequence[Any]) -> Any:
    if isinstance(pixels[0], np.ndarray):
        return np.concatenate(pixels)
    import torch  # only GPU-decoded pixels are tensors; torch is loaded by then

    return torch.cat(list(pixels))
