"""Seed 001: frozen CLIP ViT-B/32 image and text encoders (one static prompt) + fine-tuned ResNet101, features
concatenated → MLP 512-512-1 with BatchNorm, ReLU and dropout 0.4 (Table I) → one fake-logit.

Table I gives the ResNet101 branch a 512-wide output, so its 2048-wide pooled features are projected to 512.
The prompt embedding is the same for every image; it is concatenated as the paper describes.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from deepsift.engines.errors import EngineError
from deepsift.engines.models.backbones import build_clip, clip_tokenizer
from deepsift.engines.models.outputs import DetectorOutput, MlpClassifier
from deepsift.engines.models.sections import check_sections
from deepsift.engines.recipes import CnnSpec, Recipe


class ResNetBranch(nn.Module):
    """A torchvision ResNet trunk (no classifier) and a linear projection of its pooled features."""

    def __init__(self, spec: CnnSpec) -> None:
        super().__init__()
        from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

        block = Bottleneck if spec.block == "bottleneck" else BasicBlock
        self.trunk = ResNet(block, list(spec.layers))
        if spec.weights:
            load_resnet_weights(self.trunk, Path(spec.weights))
        self.trunk.fc = nn.Identity()
        self.project = nn.Linear(512 * block.expansion, spec.out_dim)
        self.requires_grad_(spec.trainable)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.project(self.trunk(pixels))


def load_resnet_weights(trunk: nn.Module, path: Path) -> None:
    """Load a torchvision ResNet state_dict (e.g. the ImageNet ``resnet101-*.pth`` fetched once by the operator)."""
    if not path.exists():
        raise EngineError(f"ResNet weights not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        trunk.load_state_dict(state.get("state_dict", state))
    except RuntimeError as e:
        raise EngineError(f"{path} does not fit the ResNet: {e}") from e


class ClipResNetFusion(nn.Module):
    """CLIP image + prompt embeddings (frozen) ‖ ResNet features (trained) → MLP → fake-logit."""

    def __init__(self, clip: nn.Module, embed_dim: int, recipe: Recipe) -> None:
        super().__init__()
        assert recipe.cnn is not None and recipe.prompt is not None  # checked by the builder
        self.clip = clip.requires_grad_(False)
        self.register_buffer("prompt_tokens", clip_tokenizer(clip)([recipe.prompt.text]), persistent=False)
        self.cnn = ResNetBranch(recipe.cnn)
        self.head = MlpClassifier(2 * embed_dim + recipe.cnn.out_dim, recipe.head, 1)

    def train(self, mode: bool = True) -> ClipResNetFusion:
        """The frozen CLIP stays in eval mode while the rest trains."""
        super().train(mode)
        self.clip.eval()
        return self

    def outputs(self, pixels: torch.Tensor) -> DetectorOutput:
        with torch.no_grad():
            image = F.normalize(self.clip.encode_image(pixels), dim=-1)
            prompt = F.normalize(self.clip.encode_text(self.prompt_tokens), dim=-1).expand(len(pixels), -1)
        features = torch.cat([image, prompt, self.cnn(pixels)], dim=-1)
        return DetectorOutput(fake_logit=self.head(features)[:, 0])

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.outputs(pixels).fake_logit


def build_clip_resnet_fusion(recipe: Recipe) -> ClipResNetFusion:
    check_sections(recipe, "clip_resnet_fusion", required=("cnn", "prompt"), with_text=True)
    backbone = recipe.backbone
    if backbone.lora is not None or backbone.unfreeze_last_blocks != 0 or backbone.grad_checkpointing:
        raise ValueError(
            f"recipe {recipe.name!r}: seed 001 keeps CLIP frozen (no lora, unfreeze_last_blocks 0, no checkpointing)"
        )
    clip, embed_dim = build_clip(backbone)
    return ClipResNetFusion(clip, embed_dim, recipe)
