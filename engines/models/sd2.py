"""Seed 002 (SD²): CLIP image and text towers fine-tuned with LoRA, the Cross-Layer Attention Module (CLAM) over
the CLS token of every image layer, and classification by image–text similarity to class text labels.

At inference each class is represented by its first ("simple") label, e.g. "a photo of a face swapping."; the
class logits are τ·cos(f, u_c) and P(fake) = 1 − P(REAL) (§5.1). Training samples one label per class per batch
from the Appendix E label sets (``engines/models/data/sd2_text_labels.json``); the losses live in the trainer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from deepsift.engines.models.backbones import build_clip, clip_tokenizer, enable_grad_checkpointing
from deepsift.engines.models.lora import add_lora
from deepsift.engines.models.outputs import DetectorOutput, fake_logit_from_class_logits
from deepsift.engines.models.sections import check_sections
from deepsift.engines.recipes import ClamSpec, Recipe

DATA_DIR = Path(__file__).parent / "data"


class Clam(nn.Module):
    """Multi-head self-attention across the per-layer CLS tokens, mean-pooled, concatenated with the final
    embedding and refined by an adapter Linear–GELU–Linear (§4.1, Eq. 1–2)."""

    def __init__(self, width: int, embed_dim: int, spec: ClamSpec) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(width, spec.heads, batch_first=True)
        self.adapter = nn.Sequential(
            nn.Linear(width + embed_dim, spec.adapter_hidden), nn.GELU(), nn.Linear(spec.adapter_hidden, embed_dim)
        )

    def forward(self, cls_tokens: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
        attended, _ = self.attention(cls_tokens, cls_tokens, cls_tokens, need_weights=False)
        return self.adapter(torch.cat([attended.mean(dim=1), final], dim=-1))


def load_text_labels(file: str, class_names: tuple[str, ...]) -> dict[str, list[str]]:
    """The label sets by class, in the task's class order; refuses a file whose classes differ from the task's."""
    path = Path(file) if Path(file).is_absolute() else DATA_DIR / file
    labels = json.loads(path.read_text())["labels"]
    if set(labels) != set(class_names) or any(not labels[c] for c in class_names):
        raise ValueError(f"{path.name} labels classes {sorted(labels)}, the task has {sorted(class_names)}")
    return {c: list(labels[c]) for c in class_names}


class Sd2Detector(nn.Module):
    """``outputs`` gives class logits τ·cos(f, u_c) against the simple labels and f for the contrastive loss."""

    def __init__(self, clip: nn.Module, embed_dim: int, recipe: Recipe) -> None:
        super().__init__()
        assert recipe.clam is not None and recipe.text_labels is not None  # checked by the builder
        self.clip = clip
        self.tokenize = clip_tokenizer(clip)
        self.clam = Clam(int(clip.visual.transformer.width), embed_dim, recipe.clam)
        scale = recipe.text_labels.init_logit_scale
        self.logit_scale = nn.Parameter(torch.tensor(math.log(scale)))
        self.logit_bias = nn.Parameter(torch.tensor(-scale))  # SigLIP bias starts at −τ (§4.3)
        self.real_index = recipe.task.class_names.index(recipe.task.real_class)
        self.labels = load_text_labels(recipe.text_labels.file, recipe.task.class_names)
        simple = self.tokenize([self.labels[c][0] for c in recipe.task.class_names])
        self.register_buffer("simple_label_tokens", simple, persistent=False)
        self.label_tokens = [self.tokenize(self.labels[c]) for c in recipe.task.class_names]

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(tokens.to(self.simple_label_tokens.device))

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return clam_image_features(self.clip.visual, self.clam, pixels)

    def sample_label_indices(self, generator: torch.Generator) -> torch.Tensor:
        """Which label of each class to use: one per class, drawn at random (once per batch, §4.2)."""
        return torch.cat([torch.randint(len(tokens), (1,), generator=generator) for tokens in self.label_tokens])

    def label_tokens_at(self, indices: torch.Tensor) -> torch.Tensor:
        """The tokens of label ``indices[c]`` of each class c."""
        return torch.stack([tokens[int(i)] for tokens, i in zip(self.label_tokens, indices, strict=True)])

    def sample_label_tokens(self, generator: torch.Generator) -> torch.Tensor:
        """One label per class, drawn at random (once per batch, §4.2)."""
        return self.label_tokens_at(self.sample_label_indices(generator))

    def class_logits(self, image_features: torch.Tensor, label_features: torch.Tensor) -> torch.Tensor:
        return scaled_cosine(self.logit_scale, image_features, label_features)

    def outputs(self, pixels: torch.Tensor) -> DetectorOutput:
        features = self.image_features(pixels)
        logits = self.class_logits(features, self.encode_text(self.simple_label_tokens))
        return DetectorOutput(
            fake_logit=fake_logit_from_class_logits(logits, self.real_index),
            class_logits=logits,
            image_features=features,
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.outputs(pixels).fake_logit

    def for_export(self) -> Sd2Inference:
        """The inference form, without the text tower: what an engine export traces. Call it in eval mode (the
        text tower's LoRA dropout would otherwise reach the folded label features)."""
        return Sd2Inference(self)


def clam_image_features(visual: nn.Module, clam: Clam, pixels: torch.Tensor) -> torch.Tensor:
    """f: the CLAM over the per-layer CLS tokens of the image tower and its final embedding."""
    found = visual.forward_intermediates(pixels, output_fmt="NLC", output_extra_tokens=True)
    cls_tokens = torch.cat(found["image_intermediates_prefix"], dim=1)  # (N, layers, width)
    return clam(cls_tokens, found["image_features"])


def scaled_cosine(
    logit_scale: torch.Tensor, image_features: torch.Tensor, label_features: torch.Tensor
) -> torch.Tensor:
    """τ·cos(f, u_c) for every image and label."""
    cosine = F.normalize(image_features, dim=-1) @ F.normalize(label_features, dim=-1).T
    return logit_scale.exp() * cosine


class Sd2Inference(nn.Module):
    """SD² at inference: the simple labels never change, so their text features are computed once and kept as a
    constant buffer. It shares the detector's image tower, CLAM and τ, and holds no text tower, so an exported
    graph carries none."""

    def __init__(self, detector: Sd2Detector) -> None:
        super().__init__()
        self.visual, self.clam, self.logit_scale = detector.clip.visual, detector.clam, detector.logit_scale
        self.real_index = detector.real_index
        with torch.no_grad():
            label_features = detector.encode_text(detector.simple_label_tokens)
        self.register_buffer("label_features", label_features.detach().clone())

    def outputs(self, pixels: torch.Tensor) -> DetectorOutput:
        features = clam_image_features(self.visual, self.clam, pixels)
        logits = scaled_cosine(self.logit_scale, features, self.label_features)
        return DetectorOutput(
            fake_logit=fake_logit_from_class_logits(logits, self.real_index),
            class_logits=logits,
            image_features=features,
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.outputs(pixels).fake_logit


def build_sd2(recipe: Recipe) -> Sd2Detector:
    check_sections(recipe, "sd2", required=("clam", "text_labels"), with_text=True)
    backbone = recipe.backbone
    if backbone.unfreeze_last_blocks != 0:
        raise ValueError(f"recipe {recipe.name!r}: SD² adapts CLIP through LoRA only (unfreeze_last_blocks 0)")
    clip, embed_dim = build_clip(backbone)  # pretrained weights load before the adapters are added
    clip.requires_grad_(False)
    if backbone.lora is not None:
        blocks = {"image": clip.visual.transformer.resblocks, "text": clip.transformer.resblocks}
        for tower in backbone.lora.towers:
            add_lora(list(blocks[tower]), backbone.lora)
    if backbone.grad_checkpointing:
        enable_grad_checkpointing(clip)
    return Sd2Detector(clip, embed_dim, recipe)
