"""The engine manifest: the JSON beside an engine artifact that says everything about it.

The daemon takes every preprocessing fact from here (``input``), and every verdict names the engine
it came from by ``name``, ``version`` and ``artifact_sha256``. Schema changes bump ``schema_version``:

- 1: one output, ``output_name`` (the fake logit); temperature calibration only.
- 2: ``outputs`` names the fake-logit, class-logit and mask-logit tensors; isotonic calibration.
  Version-1 manifests still load (their ``output_name`` becomes ``outputs.fake_logit``).
  Optional ``uncertain_band`` (still schema 2; manifests without it load unchanged and have no band): the range
  ``[low, high)`` of calibrated P(fake) around ``threshold`` where the engine does not reach the band's target
  precision on validation; the daemon labels such media ``uncertain`` (``trainer rebuild-engine
  --uncertain-precision``, chosen by ``trainer.band``).
  ``input.interpolation`` (still schema 2): the resize filter, ``bicubic`` in the paper recipes; manifests written
  before it existed have none and resize ``bilinear``, as their engines were built and checked.
  ``input.rounding`` (still schema 2): ``torchvision`` truncates the scaled side and rounds the centre-crop offset
  as torchvision's Resize and CenterCrop do (the SD² recipe); manifests without it round as engines before it did
  (``nearest``).
  Optional ``backbone_activation`` (still schema 2; older manifests load with None): the MLP activation of the
  backbone's transformer blocks as built, ``quick_gelu`` where OpenAI CLIP weights need it (``engines.models``).
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from deepsift.engines.preprocess import InputContract
from deepsift.engines.recipes import TaskSpec

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
    """Maps the engine's fake logit to a calibrated P(fake).

    ``none``/``temperature``: ``sigmoid(logit / temperature)``. ``isotonic``: a monotone step function
    fitted on validation logits, stored as knots (``logits`` ascending → ``probabilities``) and
    interpolated linearly between them, flat beyond the ends.
    """

    method: Literal["none", "temperature", "isotonic"] = "none"
    temperature: float = Field(default=1.0, gt=0.0)
    logits: tuple[float, ...] = ()
    probabilities: tuple[float, ...] = ()

    @model_validator(mode="after")
    def _knots(self) -> Calibration:
        if self.method == "isotonic":
            if len(self.logits) < 2 or len(self.logits) != len(self.probabilities):
                raise ValueError("isotonic calibration needs at least two (logit, probability) knots of equal count")
            if np.any(np.diff(self.logits) < 0) or np.any(np.diff(self.probabilities) < 0):
                raise ValueError("isotonic knots must be non-decreasing in both logit and probability")
            if not all(0.0 <= p <= 1.0 for p in self.probabilities):
                raise ValueError("isotonic probabilities must lie in [0, 1]")
        elif self.logits or self.probabilities:
            raise ValueError(f"{self.method} calibration takes no knots")
        return self

    def p_fake(self, logit: float) -> float:
        if self.method == "isotonic":
            return float(np.interp(logit, self.logits, self.probabilities))
        z = logit / self.temperature
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))

    def p_fake_array(self, logits: np.ndarray) -> np.ndarray:
        """``p_fake`` over an array, in float64."""
        z = np.asarray(logits, dtype=np.float64)
        if self.method == "isotonic":
            return np.interp(z, self.logits, self.probabilities)
        z = z / self.temperature
        return np.exp(-np.logaddexp(0.0, -z))  # sigmoid without overflow


class UncertainBand(_Frozen):
    """Calibrated P(fake) in ``[low, high)`` is labelled ``uncertain``: at or above ``high`` the validation items
    were fake, and below ``low`` real, with at least ``target_precision``. The figures say what it was chosen on;
    a precision is None where no validation item fell on that side (the target was not reached there)."""

    low: float = Field(ge=0.0, le=1.0)
    high: float = Field(ge=0.0, le=1.0)
    target_precision: float = Field(gt=0.0, le=1.0)
    precision_fake: float | None = Field(default=None, ge=0.0, le=1.0, description="of validation items >= high")
    precision_real: float | None = Field(default=None, ge=0.0, le=1.0, description="of validation items < low")
    share_uncertain: float | None = Field(default=None, ge=0.0, le=1.0, description="validation items inside")
    n: int = Field(default=0, ge=0, description="validation items it was chosen on")

    @model_validator(mode="after")
    def _ordered(self) -> UncertainBand:
        if self.low > self.high:
            raise ValueError(f"uncertain band must satisfy low <= high, got {self.low}/{self.high}")
        return self

    def contains(self, p_fake: float) -> bool:
        return self.low <= p_fake < self.high


class OutputSpec(_Frozen):
    """Names of the engine's output tensors. ``fake_logit`` (N) always; ``class_logits`` (N×C over
    ``task.class_names``) and ``mask_logits`` (N×1×H×W at the input size) where the detector makes them."""

    fake_logit: str = "logit"
    class_logits: str | None = None
    mask_logits: str | None = None

    def names(self) -> list[str]:
        return [n for n in (self.fake_logit, self.class_logits, self.mask_logits) if n is not None]


class EngineManifest(_Frozen):
    schema_version: Literal[1, 2] = 2
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
    outputs: OutputSpec = OutputSpec()
    artifact: str = Field(description="artifact file name inside the engine directory")
    artifact_sha256: str
    weights_sha256: str
    calibration: Calibration = Calibration()
    threshold: float = Field(default=0.5, ge=0.0, le=1.0, description="operating threshold on calibrated P(fake)")
    uncertain_band: UncertainBand | None = Field(default=None, description="P(fake) labelled uncertain; None: none")
    backbone_activation: str | None = Field(
        default=None, description="the backbone blocks' activation as built (quick_gelu, gelu, …); None: unknown"
    )
    evaluation: dict[str, float | int | str] = Field(default_factory=dict)
    built_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @model_validator(mode="before")
    @classmethod
    def _upgrade_v1(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("schema_version") == 1 and "output_name" in data:
            data = dict(data)
            data["outputs"] = {"fake_logit": data.pop("output_name")}
        return data

    @model_validator(mode="after")
    def _outputs_fit_task(self) -> EngineManifest:
        if self.outputs.class_logits is not None and self.task.kind != "multiclass":
            raise ValueError("class_logits output needs a multiclass task")
        if self.outputs.mask_logits is not None and not self.task.masks:
            raise ValueError("mask_logits output needs a task with masks")
        band = self.uncertain_band
        if band is not None and not band.low <= self.threshold <= band.high:
            raise ValueError(f"uncertain band [{band.low}, {band.high}) must hold the threshold {self.threshold}")
        if band is not None and "uncertain" in self.task.class_names:
            raise ValueError("a task with a class named 'uncertain' cannot have an uncertain band (its label)")
        return self

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
