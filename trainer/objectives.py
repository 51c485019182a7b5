"""Training objectives, one per ``train.loss`` of a recipe: the loss of a batch and the predictions for evaluation.

An objective is an ``nn.Module`` wrapping the detector so that DDP sees the whole training forward pass
(``forward(batch) -> (loss, parts)``), whichever detector methods the loss needs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from deepsift.engines.recipes import MaskLossSpec, Recipe
from deepsift.engines.registry import Registry
from deepsift.trainer.distributed import broadcast_from_main, global_batch

Batch = dict[str, Any]
OBJECTIVES: Registry[type[Objective]] = Registry("objective")


@dataclass(frozen=True)
class Predictions:
    """Per image: P(fake), class probabilities in the task's class order, and tamper probabilities (or None)."""

    p_fake: torch.Tensor
    class_probs: torch.Tensor
    mask_probs: torch.Tensor | None = None


class Objective(nn.Module):
    """Base: holds the detector and recipe; subclasses define ``forward`` (the loss) and ``predict``."""

    trainable: ClassVar[bool] = True

    def __init__(self, detector: nn.Module, recipe: Recipe, seed: int = 0) -> None:
        super().__init__()
        self.detector, self.recipe = detector, recipe

    @classmethod
    def check_data(cls, recipe: Recipe, rows: Sequence[Any]) -> None:
        """Refuse training rows (``ManifestRow``) this objective cannot learn from, before a step is spent."""

    @classmethod
    def run_notes(cls, recipe: Recipe, ranks: int = 1) -> dict[str, Any]:
        """What the log and the run summary say about how the recipe trains on ``ranks`` processes (e.g. which
        ablation of a paper it is)."""
        return {}

    def forward(self, batch: Batch, progress: float) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    @staticmethod
    def predict(detector: nn.Module, pixels: torch.Tensor, recipe: Recipe) -> Predictions:
        raise NotImplementedError


def _binary_probs(p_fake: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """[P(class)] in the binary task's class order from P(fake)."""
    probs = torch.stack([1 - p_fake, p_fake], dim=1)
    return probs if recipe.task.class_names.index(recipe.task.positive_class) == 1 else probs.flip(1)


@OBJECTIVES.register("bce")
class BinaryObjective(Objective):
    """BCE with logits on the fake-logit, ``pos_weight`` on fakes, optional label smoothing (seeds 000 §2.1, 001)."""

    def forward(self, batch: Batch, progress: float) -> tuple[torch.Tensor, dict[str, float]]:
        target = batch["fake"].float()
        smoothing = self.recipe.train.label_smoothing
        target = target * (1 - smoothing) + 0.5 * smoothing
        pos_weight = torch.tensor(self.recipe.train.pos_weight, device=target.device)
        loss = F.binary_cross_entropy_with_logits(self.detector(batch["pixels"]).float(), target, pos_weight=pos_weight)
        return loss, {"bce": loss.item()}

    @staticmethod
    def predict(detector: nn.Module, pixels: torch.Tensor, recipe: Recipe) -> Predictions:
        p_fake = torch.sigmoid(detector(pixels).float())
        return Predictions(p_fake=p_fake, class_probs=_binary_probs(p_fake, recipe))


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 − soft Dice per image, averaged."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    return (1 - (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)).mean()


def soft_iou_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 − soft Jaccard per image, averaged."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    inter = (p * t).sum(1)
    return (1 - (inter + eps) / (p.sum(1) + t.sum(1) - inter + eps)).mean()


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = torch.exp(-bce)
    return ((1 - p_t) ** gamma * bce).mean()


def mask_weights(spec: MaskLossSpec, progress: float) -> tuple[float, float, float]:
    """(BCE, Dice, IoU) weights; with the schedule, BCE goes 1.5× → 0.5× and Dice/IoU 0.5× → 1.5× over training."""
    if not spec.bce_to_dice_schedule:
        return spec.bce, spec.dice, spec.iou
    shift = 0.5 + progress
    return spec.bce * (2.0 - shift), spec.dice * shift, spec.iou * shift


@OBJECTIVES.register("multitask")
class MultitaskObjective(Objective):
    """Seed 000 Eq. 1: CE(class) + λ_bce·BCE(mask) + λ_dice·Dice(mask) [+ IoU, focal], masks where supervised."""

    def forward(self, batch: Batch, progress: float) -> tuple[torch.Tensor, dict[str, float]]:
        spec = self.recipe.train.mask_loss
        out = self.detector.outputs(batch["pixels"])
        target = batch["target"].long()
        ce = F.cross_entropy(out.class_logits.float(), target, label_smoothing=self.recipe.train.label_smoothing)
        loss, parts = spec.ce * ce, {"ce": ce.item()}
        supervised = batch["has_mask"].bool()
        if supervised.any():
            logits, masks = out.mask_logits[supervised].float(), batch["mask"][supervised].float()
            w_bce, w_dice, w_iou = mask_weights(spec, progress)
            terms = {
                "mask_bce": (w_bce, lambda: F.binary_cross_entropy_with_logits(logits, masks)),
                "mask_dice": (w_dice, lambda: dice_loss(logits, masks)),
                "mask_iou": (w_iou, lambda: soft_iou_loss(logits, masks)),
                "mask_focal": (spec.focal, lambda: focal_loss(logits, masks, spec.focal_gamma)),
            }
            for name, (weight, term) in terms.items():
                if weight > 0:
                    value = term()
                    loss = loss + weight * value
                    parts[name] = value.item()
        return loss, parts

    @staticmethod
    def predict(detector: nn.Module, pixels: torch.Tensor, recipe: Recipe) -> Predictions:
        out = detector.outputs(pixels)
        return Predictions(
            p_fake=torch.sigmoid(out.fake_logit.float()),
            class_probs=torch.softmax(out.class_logits.float(), dim=1),
            mask_probs=torch.sigmoid(out.mask_logits.float()),
        )


def siglip_loss(image: torch.Tensor, text: torch.Tensor, same: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor):
    """Sigmoid image–text loss (Zhai et al. 2023) as in seed 002 Alg. 1; ``same[i, j]`` marks positive pairs
    (the diagonal, and identical descriptions, which must not be pushed apart)."""
    logits = scale * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T + bias
    signs = same.float() * 2 - 1
    return -F.logsigmoid(signs * logits).sum() / len(image)


def text_ids(texts: list[str], device: torch.device) -> torch.Tensor:
    """A 64-bit digest per text (the same in every process, unlike ``hash``): equal texts, equal ids."""
    digests = [hashlib.blake2b(t.encode(), digest_size=8).digest() for t in texts]
    return torch.tensor([int.from_bytes(d, "little", signed=True) for d in digests], device=device)


def description_loss(
    image: torch.Tensor, text: torch.Tensor, ids: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """One L_D term (seed 002 Eq. 5): this rank's images against the description embeddings of the global batch,
    gathered from every rank with their gradients; pairs with the same description are positive. Summed over the
    pairs and divided by this rank's images (Alg. 1): DDP's mean over ranks is then the one-process loss."""
    all_text, all_ids = global_batch(text.float()), global_batch(ids)
    return siglip_loss(image, all_text, ids[:, None] == all_ids[None, :], scale, bias)


def separation_loss(label_features: torch.Tensor, reduction: str) -> torch.Tensor:
    """L_S = ‖cos(U, Uᵀ) − I‖²_F: ``sum`` of the C² squared entries (Eq. 4) or their ``mean`` (App. D, Alg. 1)."""
    unit = F.normalize(label_features.float(), dim=-1)
    squared = (unit @ unit.T - torch.eye(len(unit), device=unit.device)).pow(2)
    return squared.sum() if reduction == "sum" else squared.mean()


DESCRIPTIONS = {"face": ("face_description", "l_d_face"), "environment": ("environment_description", "l_d_env")}
TABLE5 = "seed 002 Table 5 (the ablation)"
TABLE5_ROWS = {
    ("face", "environment"): "seed 002 Table 5 row 4: L_C + CLAM + L_D-Face + L_D-Env, the full SD² (mAUC 87.79)",
    ("face",): "seed 002 Table 5 row 3: L_C + CLAM + L_D-Face, no L_D-Env (mAUC 84.34)",
    (): "seed 002 Table 5 row 2: L_C + CLAM, no L_D (mAUC 81.84)",
}


def sd2_ablation(terms: tuple[str, ...]) -> str:
    """Which row of the paper's ablation a recipe's L_D terms are (CLAM is always on here, so never row 1)."""
    key = tuple(t for t in DESCRIPTIONS if t in terms)
    return TABLE5_ROWS.get(key, f"not a row of {TABLE5}: L_C + CLAM + L_D-Env without L_D-Face")


@OBJECTIVES.register("sd2")
class Sd2Objective(Objective):
    """Seed 002 Eq. 6: α·L_C + L_S + L_D, with one text label per class sampled per (global) batch (§4.2) and L_D's
    negatives the whole global batch (§4.3)."""

    def __init__(self, detector: nn.Module, recipe: Recipe, seed: int = 0) -> None:
        super().__init__(detector, recipe, seed)
        self.generator = torch.Generator().manual_seed(seed)

    @classmethod
    def check_data(cls, recipe: Recipe, rows: Sequence[Any]) -> None:
        """Refuse training rows without the descriptions the recipe's L_D terms need."""
        terms = recipe.train.sd2_loss.description_terms
        for term in terms:
            column = DESCRIPTIONS[term][0]
            missing = sum(1 for row in rows if not getattr(row, column))
            if missing:
                rest = tuple(t for t in terms if t != term)
                raise ValueError(
                    f"recipe {recipe.name!r}: {missing} of {len(rows)} training rows have no {column}, which L_D "
                    f"needs (seed 002 §4.3); add them, or train without the term (train.sd2_loss.description_terms: "
                    f"{list(rest)}, {sd2_ablation(rest)})"
                )

    @classmethod
    def run_notes(cls, recipe: Recipe, ranks: int = 1) -> dict[str, Any]:
        spec = recipe.train.sd2_loss
        return {
            "ablation": sd2_ablation(spec.description_terms),
            "separation_reduction": spec.separation_reduction,
            # per image and L_D term: the rest of the global micro-batch (gradient accumulation adds none)
            "description_negatives": recipe.train.micro_batch(ranks) - 1 if spec.description_terms else 0,
        }

    def _label_tokens(self, device: torch.device) -> torch.Tensor:
        """This batch's label per class: rank 0's draw on every rank, so the global batch shares one label set."""
        picks = broadcast_from_main(self.detector.sample_label_indices(self.generator).to(device))
        return self.detector.label_tokens_at(picks.cpu())

    def _description_loss(self, features: torch.Tensor, texts: list[str], column: str) -> torch.Tensor:
        if not all(texts):
            raise ValueError(f"a training batch has no {column} for an image; L_D needs one for every image")
        d = self.detector
        text = d.encode_text(d.tokenize(texts))
        return description_loss(features, text, text_ids(texts, features.device), d.logit_scale.exp(), d.logit_bias)

    def forward(self, batch: Batch, progress: float) -> tuple[torch.Tensor, dict[str, float]]:
        spec, d = self.recipe.train.sd2_loss, self.detector
        features = d.image_features(batch["pixels"])
        labels = d.encode_text(self._label_tokens(features.device))
        l_c = F.cross_entropy(d.class_logits(features, labels).float(), batch["target"].long())
        l_s = separation_loss(labels, spec.separation_reduction)
        loss, parts = spec.alpha * l_c + spec.separation * l_s, {"l_c": l_c.item(), "l_s": l_s.item()}
        for term in spec.description_terms:
            column, name = DESCRIPTIONS[term]
            l_d = self._description_loss(features.float(), list(batch[column]), column)
            loss = loss + spec.description * l_d
            parts[name] = l_d.item()
        return loss, parts

    @staticmethod
    def predict(detector: nn.Module, pixels: torch.Tensor, recipe: Recipe) -> Predictions:
        out = detector.outputs(pixels)
        return Predictions(
            p_fake=torch.sigmoid(out.fake_logit.float()), class_probs=torch.softmax(out.class_logits.float(), dim=1)
        )


@OBJECTIVES.register("prototype")
class PrototypeObjective(Objective):
    """Not trained by gradients: ``trainer fewshot`` fits the prototypes. Prediction as seed 000 Eq. 4."""

    trainable: ClassVar[bool] = False

    @staticmethod
    def predict(detector: nn.Module, pixels: torch.Tensor, recipe: Recipe) -> Predictions:
        probs = detector.class_probabilities(pixels).float()
        return Predictions(
            p_fake=probs[:, recipe.task.class_names.index(recipe.task.positive_class)], class_probs=probs
        )
