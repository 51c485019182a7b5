"""The engine manifest: the JSON beside an engine artifact that says everything about it.

The daemon takes every preprocessing fact from here (``input``), and every verdict names the engine
it came from by ``name``, ``version`` and ``artifact_sha256``. Schema changes bump ``schema_version``.
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engines.preprocess import InputContract
from engines.recipes import TaskSpec

MANIFEST_FILE = "manifest.json"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BackendSpec(_Frozen):
    name: str = Field(description="key in engines.backends.BACKENDS, e.g. onnxruntime")
    version: str = Field(description="version of the runtime the artifact was built and checked with")
    precision: Literal["fp32", "fp16", "bf16", "int8"] = "fp32"
    onnx_opset: int | None = None
    gpu_compute_capability: str | None = Field(default=None, description="e.g. '9.0'; TensorRT plans only")


class BatchRange(_Frozen):
    min: int = Field(default=1, ge=1)
    opt: int = Field(default=32, ge=1)
    max: int = Field(default=64, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> BatchRange:
        if not self.min <= self.opt <= self.max:
            raise ValueError(f"batch range must satisfy min <= opt <= max, got {self.min}/{self.opt}/{self.max}")
        return self


class Calibration(_Frozen):
    """Maps the engine's logit to a calibrated P(fake): ``sigmoid(logit / temperature)``."""

    method: Literal["none", "temperature"] = "none"
    temperature: float = Field(default=1.0, gt=0.0)

    def p_fake(self, logit: float) -> float:
        z = logit / self.temperature
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


class EngineManifest(_Frozen):
    schema_version: Literal[1] = 1
    name: str
    version: int = Field(default=0, ge=0, description="assigned by the engine store; 0 before it is stored")
    recipe: str
    recipe_sha256: str
    detector: str
    task: TaskSpec
    input: InputContract
    backend: BackendSpec
    batch: BatchRange = BatchRange()
    input_name: str = "pixels"
    output_name: str = "logit"
    artifact: str = Field(description="artifact file name inside the engine directory")
    artifact_sha256: str
    weights_sha256: str
    calibration: Calibration = Calibration()
    threshold: float = Field(default=0.5, ge=0.0, le=1.0, description="operating threshold on calibrated P(fake)")
    evaluation: dict[str, float | int | str] = Field(default_factory=dict)
    built_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    def write(self, directory: Path) -> Path:
        path = Path(directory) / MANIFEST_FILE
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path

    @classmethod
    def read(cls, directory: Path) -> EngineManifest:
        return cls.model_validate_json((Path(directory) / MANIFEST_FILE).read_text())


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
