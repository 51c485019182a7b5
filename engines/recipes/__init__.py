"""Detector recipes: small declarative JSON files parsed into frozen, typed objects.

A recipe names a detector kind, its backbone, head, input contract and training settings. Unknown
keys are rejected — a value the code silently ignored would be a bug. The recipe hash (of the parsed,
canonical form) is recorded in every engine manifest built from it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from deepsift.engines.preprocess import InputContract

RECIPE_DIR = Path(__file__).parent


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TaskSpec(_Frozen):
    """What the detector decides. Every detector also gives P(fake); for ``multiclass`` that is
    1 − P(``real_class``) (seed 002 §5.1), for ``binary`` it is P(``positive_class``)."""

    kind: Literal["binary", "multiclass"] = "binary"
    class_names: tuple[str, ...] = ("real", "fake")
    positive_class: str = "fake"
    real_class: str = "real"
    masks: bool = Field(default=False, description="the detector also predicts a tamper mask")

    @model_validator(mode="after")
    def _classes_known(self) -> TaskSpec:
        if self.real_class not in self.class_names:
            raise ValueError(f"real_class {self.real_class!r} is not one of {self.class_names}")
        if self.kind == "binary" and (len(self.class_names) != 2 or self.positive_class not in self.class_names):
            raise ValueError("a binary task has two classes, one of them the positive_class")
        if self.kind == "multiclass" and len(self.class_names) < 3:
            raise ValueError("a multiclass task has at least three classes")
        return self


class LoraSpec(_Frozen):
    """Low-rank adapters on the named layers of every transformer block (seed 002 §5.1: r 8, α 32, dropout 0.1)."""

    rank: int = Field(default=8, gt=0)
    alpha: float = Field(default=32.0, gt=0.0)
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    targets: tuple[Literal["q", "k", "v", "out", "mlp_fc", "mlp_proj"], ...] = ("q", "k", "v", "out")
    towers: tuple[Literal["image", "text"], ...] = ("image", "text")


class BackboneSpec(_Frozen):
    """An OpenCLIP image tower: a named open_clip config, or an inline ``vision_cfg`` for tiny towers."""

    open_clip: str | None = Field(default=None, description="open_clip model config name, e.g. ViT-B-16-SigLIP2-256")
    vision_cfg: dict[str, Any] | None = Field(default=None, description="inline open_clip CLIPVisionCfg fields")
    embed_dim: int | None = Field(default=None, description="output width, required with vision_cfg")
    image_size: int | None = Field(default=None, description="overrides the config's image size")
    weights: str | None = Field(default=None, description="local open_clip checkpoint (.safetensors/.bin/.pt) or dir")
    weights_tag: str | None = Field(
        default=None, description="open_clip pretrained tag the weights are (e.g. 'openai'): sets the activation"
    )
    quick_gelu: bool | None = Field(
        default=None, description="QuickGELU towers (OpenAI CLIP weights); None: as weights_tag / the open_clip config"
    )
    unfreeze_last_blocks: int = Field(default=0, ge=-1, description="0 = frozen tower, -1 = all blocks trainable")
    with_text: bool = Field(default=False, description="build the whole CLIP model (image and text towers)")
    text_cfg: dict[str, Any] | None = Field(default=None, description="inline open_clip CLIPTextCfg fields")
    grad_checkpointing: bool = Field(default=False, description="recompute block activations in backward")
    lora: LoraSpec | None = None

    @model_validator(mode="after")
    def _one_source(self) -> BackboneSpec:
        if (self.open_clip is None) == (self.vision_cfg is None):
            raise ValueError("backbone needs exactly one of open_clip or vision_cfg")
        if self.vision_cfg is not None and self.embed_dim is None:
            raise ValueError("backbone.embed_dim is required with vision_cfg")
        if self.with_text and self.vision_cfg is not None and self.text_cfg is None:
            raise ValueError("an inline tower with_text needs text_cfg")
        if self.text_cfg is not None and not (self.with_text and self.vision_cfg is not None):
            raise ValueError("text_cfg belongs to an inline tower with_text")
        if self.lora is not None and not self.with_text:
            raise ValueError("lora is applied to CLIP towers built with_text")
        if self.weights_tag is not None and self.open_clip is None:
            raise ValueError("weights_tag names an open_clip pretrained tag of a named open_clip config")
        return self


class HeadSpec(_Frozen):
    hidden: tuple[int, ...] = (256,)
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    feature_noise_std: float = Field(default=0.02, ge=0.0, description="Gaussian noise on the embedding in training")
    feature_dropout: float = Field(default=0.1, ge=0.0, lt=1.0, description="dropout on the embedding in training")
    batch_norm: bool = Field(default=False, description="BatchNorm after each hidden Linear (seed 001)")
    init: Literal["default", "kaiming"] = "default"


class MaskDecoderSpec(_Frozen):
    """SegFormer-style decoder over several transformer depths (seed 000 §2.2)."""

    depths: tuple[int, ...] = Field(min_length=1, description="0-based block indices whose tokens feed the decoder")
    width: int = Field(default=256, gt=0, description="common channel width after the 1x1 projections")
    smoothing_kernel: int = Field(default=3, ge=1, description="depth-wise conv kernel that smooths each map")
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)


class CnnSpec(_Frozen):
    """A torchvision ResNet branch (seed 001: ResNet101 = bottleneck [3, 4, 23, 3]), its pooled features
    projected to ``out_dim``."""

    block: Literal["basic", "bottleneck"] = "bottleneck"
    layers: tuple[int, int, int, int] = (3, 4, 23, 3)
    out_dim: int = Field(default=512, gt=0)
    weights: str | None = Field(default=None, description="local torchvision state_dict (.pth) for the trunk")
    trainable: bool = True


class PromptSpec(_Frozen):
    """A static text prompt encoded once per image by the frozen CLIP text tower (seed 001 §III-A)."""

    text: str = Field(min_length=1)


class ClamSpec(_Frozen):
    """Cross-Layer Attention Module (seed 002 §4.1): attention over per-layer CLS tokens, then an adapter."""

    heads: int = Field(default=8, gt=0)
    adapter_hidden: int = Field(default=768, gt=0)


class TextLabelsSpec(_Frozen):
    """Text labels per class; the first of each is the simple label used at inference (seed 002 App. E)."""

    file: str = Field(description="JSON {class name: [labels]} beside engines/models, or an absolute path")
    init_logit_scale: float = Field(default=1 / 0.07, gt=0.0, description="τ at start, as CLIP")


class FewShotSpec(_Frozen):
    """Prototype few-shot adaptation (seed 000 §2.3)."""

    shots: int = Field(default=50, gt=0, description="support images per class")
    tau: float = Field(default=1.0, gt=0.0)
    hflip_tta: bool = True
    min_precision: float = Field(default=0.95, gt=0.0, le=1.0, description="threshold chosen on validation for this")


class MaskLossSpec(_Frozen):
    """Seed 000 Eq. 1: CE(class) + 0.2·BCE(mask) + 0.3·Dice(mask); IoU and focal terms optional, off by default."""

    ce: float = 1.0
    bce: float = 0.2
    dice: float = 0.3
    iou: float = 0.0
    focal: float = 0.0
    focal_gamma: float = 2.0
    bce_to_dice_schedule: bool = Field(default=False, description="shift weight from BCE to Dice/IoU over training")


class Sd2LossSpec(_Frozen):
    """Seed 002 Eq. 6: α·L_C + L_S + L_D with α = 2.

    ``separation_reduction``: L_S reduces the C×C matrix cos(U, Uᵀ) − I by ``sum`` (Eq. 4, the squared Frobenius
    norm) or ``mean`` (Appendix D, Alg. 1) — with five classes a 25× difference in L_S's weight. The shipped
    recipes keep Eq. 4: the equation defines the loss and Eq. 6 weighs it 1, while Alg. 1 is a sketch
    (its ``np.eye(B)`` stands for the C classes). ``description_terms``: the L_D terms trained (§4.3, face and
    environment descriptions); data lacking a description a term needs is refused, and leaving a term out is an
    ablation of Table 5 (``()`` its row 2: L_C + CLAM, no L_D)."""

    alpha: float = 2.0
    separation: float = 1.0
    separation_reduction: Literal["sum", "mean"] = Field(
        default="sum", description="L_S over the C² entries: sum (Eq. 4) or mean (App. D, Alg. 1), 25x apart at C=5"
    )
    description: float = Field(default=1.0, ge=0.0, description="weight of each L_D term")
    description_terms: tuple[Literal["face", "environment"], ...] = Field(
        default=("face", "environment"), description="L_D terms trained; () is Table 5 row 2 (no L_D)"
    )

    @model_validator(mode="after")
    def _one_switch_for_l_d(self) -> Sd2LossSpec:
        if len(set(self.description_terms)) != len(self.description_terms):
            raise ValueError(f"description_terms {self.description_terms} names a term twice")
        if self.description == 0 and self.description_terms:
            raise ValueError("turn L_D off with description_terms: [], not a zero description weight")
        return self


class AugmentSpec(_Frozen):
    """Training-time augmentations (seed 000 §2.2); probabilities per image. All off by default.

    ``blur``, ``motion_blur`` and ``sharpen`` are one choice ("blur or sharpening", §2.2): at most one of them is
    applied to an image, so their probabilities add up to at most 1. ``stage`` says which pixels are augmented:
    the decoded image (``decoded``), or the model-size image after the contract's resize and pad (``resized``,
    §2.2: "we first resized and padded ..., and then applied random image-level transformations").
    """

    hflip: float = Field(default=0.0, ge=0.0, le=1.0)
    affine: float = Field(default=0.0, ge=0.0, le=1.0, description="mild rotation/scale/shift")
    perspective: float = Field(default=0.0, ge=0.0, le=1.0)
    jpeg: float = Field(default=0.0, ge=0.0, le=1.0)
    noise: float = Field(default=0.0, ge=0.0, le=1.0)
    color_jitter: float = Field(default=0.0, ge=0.0, le=1.0)
    blur: float = Field(default=0.0, ge=0.0, le=1.0, description="Gaussian blur")
    motion_blur: float = Field(default=0.0, ge=0.0, le=1.0, description="a straight-line blur, any angle")
    sharpen: float = Field(default=0.0, ge=0.0, le=1.0)
    clahe: float = Field(default=0.0, ge=0.0, le=1.0)
    stage: Literal["decoded", "resized"] = "decoded"

    @model_validator(mode="after")
    def _one_filter(self) -> AugmentSpec:
        if (total := self.blur + self.motion_blur + self.sharpen) > 1.0 + 1e-9:  # 0.33 + 0.56 + 0.11 is 1
            raise ValueError(f"blur + motion_blur + sharpen is {total:g}: they are one choice, at most 1 in all")
        return self

    @property
    def active(self) -> bool:
        return any(v > 0 for k, v in self.model_dump().items() if k != "stage")


class ResizeStage(_Frozen):
    """One early stage of progressive resizing: train at ``size`` until ``until`` of the optimizer steps."""

    until: float = Field(gt=0.0, lt=1.0, description="fraction of the optimizer steps at which the stage ends")
    size: int = Field(gt=0, description="square input side of the stage, below the contract's size")


class TrainSpec(_Frozen):
    loss: Literal["bce", "multitask", "sd2", "prototype"] = "bce"
    pos_weight: float = 1.0
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)
    optimizer: Literal["adamw", "adam"] = "adamw"
    lr: float = 2e-4
    weight_decay: float = 0.01
    batch_size: int = 64
    epochs: int = 20
    schedule: Literal["cosine", "constant"] = "cosine"
    schedule_note: str = Field(
        default="", description="where the schedule comes from: the paper's section, or why, where it gives none"
    )
    warmup_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    grad_accumulation: int = Field(default=1, ge=1)
    global_batch: int | None = Field(
        default=None,
        gt=0,
        description="images per optimizer step over all ranks, the paper's batch size; with it batch_size is per "
        "rank, and the loop accumulates global_batch / (batch_size × ranks) micro-batches (SD²'s 512 is 64 on each "
        "of 8 GPUs, or 8 micro-batches of 64 on one). None: batch_size is the micro-batch over all ranks, and "
        "grad_accumulation is as given",
    )
    grad_clip: float = Field(default=0.0, ge=0.0, description="max gradient norm; 0 = off")
    ema_decay: float = Field(default=0.0, ge=0.0, lt=1.0, description="0 = no EMA")
    amp: Literal["none", "fp16", "bf16"] = "fp16"
    select_by: Literal["f1", "auc", "loss", "accuracy", "mask_iou"] = "f1"
    mask_loss: MaskLossSpec = MaskLossSpec()
    sd2_loss: Sd2LossSpec = Sd2LossSpec()
    augment: AugmentSpec = AugmentSpec()
    progressive_resize: tuple[ResizeStage, ...] = Field(
        default=(), description="lower-resolution stages before the contract's size (seed 000 §2.2); () = off"
    )

    @model_validator(mode="after")
    def _one_batch_rule(self) -> TrainSpec:
        if self.global_batch is not None and self.grad_accumulation != 1:
            raise ValueError("give global_batch or grad_accumulation, not both: the first decides the second")
        if self.global_batch is not None and self.global_batch % self.batch_size:
            raise ValueError(f"global_batch {self.global_batch} is not a multiple of batch_size {self.batch_size}")
        return self

    def micro_batch(self, ranks: int) -> int:
        """Images in one micro-batch over all ``ranks`` (what L_D's negatives are drawn from)."""
        return self.batch_size * ranks if self.global_batch is not None else self.batch_size

    def accumulation(self, ranks: int) -> int:
        """Micro-batches per optimizer step on each of ``ranks`` processes."""
        if self.global_batch is None:
            return self.grad_accumulation
        per_step = self.batch_size * ranks
        if self.global_batch % per_step:
            raise ValueError(f"global_batch {self.global_batch} is not a multiple of batch_size {self.batch_size} × "
                             f"{ranks} ranks; run on a number of ranks that divides it")  # fmt: skip
        return self.global_batch // per_step

    @model_validator(mode="after")
    def _stages_in_order(self) -> TrainSpec:
        ends, sizes = [s.until for s in self.progressive_resize], [s.size for s in self.progressive_resize]
        if ends != sorted(set(ends)) or sizes != sorted(set(sizes)):
            raise ValueError(f"progressive_resize stages {self.progressive_resize} must grow in until and in size")
        return self


class Recipe(_Frozen):
    name: str
    detector: str = Field(description="detector kind in engines.models.DETECTORS")
    description: str = ""
    task: TaskSpec = TaskSpec()
    backbone: BackboneSpec
    head: HeadSpec = HeadSpec()
    input: InputContract
    train: TrainSpec = TrainSpec()
    decoder: MaskDecoderSpec | None = None
    cnn: CnnSpec | None = None
    prompt: PromptSpec | None = None
    clam: ClamSpec | None = None
    text_labels: TextLabelsSpec | None = None
    fewshot: FewShotSpec | None = None

    @model_validator(mode="after")
    def _stages_below_input(self) -> Recipe:
        if any(s.size >= self.input.size for s in self.train.progressive_resize):
            raise ValueError(f"progressive_resize sizes must be below the input size {self.input.size}")
        return self

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


def recipe_names() -> list[str]:
    """Names of the recipes shipped with deepsift (one JSON file each in this folder)."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.json"))


def load_recipe(name_or_path: str | Path, **overrides: Any) -> Recipe:
    """Load a shipped recipe by name, or any recipe file by path; ``overrides`` replace top-level keys."""
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPE_DIR / f"{name_or_path}.json"
        if not path.exists():
            raise KeyError(f"unknown recipe {name_or_path!r}; shipped recipes: {', '.join(recipe_names())}")
    data = json.loads(path.read_text())
    data.update(overrides)
    recipe = Recipe.model_validate(data)
    if path.parent == RECIPE_DIR and recipe.name != path.stem:
        raise ValueError(f"recipe file {path.name} declares name {recipe.name!r}; they must match")
    return recipe
