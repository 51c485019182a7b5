"""What a detector returns in training and evaluation, beyond the one fake-logit per image its engine exports."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from deepsift.engines.recipes import HeadSpec


@dataclass(frozen=True)
class DetectorOutput:
    """``fake_logit``: log P(fake)/P(real) per image (what ``forward`` and the engine give); ``class_logits``
    over the task's classes; ``mask_logits`` per pixel at input resolution; ``image_features`` for contrastive
    losses."""

    fake_logit: torch.Tensor
    class_logits: torch.Tensor | None = None
    mask_logits: torch.Tensor | None = None
    image_features: torch.Tensor | None = None


def fake_logit_from_class_logits(class_logits: torch.Tensor, real_index: int) -> torch.Tensor:
    """log(1 − P(real)) − log P(real) from class logits: sigmoid of it is 1 − softmax(real) (seed 002 §5.1)."""
    real = class_logits[:, real_index]
    others = torch.cat([class_logits[:, :real_index], class_logits[:, real_index + 1 :]], dim=1)
    return torch.logsumexp(others.float(), dim=1) - real.float()


class MlpClassifier(nn.Module):
    """Linear [→ BatchNorm] → ReLU → Dropout per hidden width, then Linear → ``n_out`` logits."""

    def __init__(self, in_dim: int, spec: HeadSpec, n_out: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width in spec.hidden:
            layers.append(nn.Linear(in_dim, width))
            if spec.batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers += [nn.ReLU(inplace=True), nn.Dropout(spec.dropout)]
            in_dim = width
        if not spec.hidden:
            layers.append(nn.Dropout(spec.dropout))
        layers.append(nn.Linear(in_dim, n_out))
        self.mlp = nn.Sequential(*layers)
        if spec.init == "kaiming":
            for layer in self.mlp:
                if isinstance(layer, nn.Linear):
                    nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                    nn.init.zeros_(layer.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features)
