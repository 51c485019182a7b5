"""Low-rank adaptation (LoRA, Hu et al. 2022) for open_clip transformer blocks, as SD² fine-tunes CLIP (seed 002 §5.1).

open_clip's blocks keep q, k and v packed in one ``nn.MultiheadAttention.in_proj_weight``, which generic LoRA
libraries cannot adapt per projection; ``LoraAttention`` recomputes that attention with a low-rank update on each
named projection. The wrapped weights stay frozen and keep their values, so pretrained checkpoints load *before*
adapters are added and a trained detector's state_dict holds both.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from deepsift.engines.recipes import LoraSpec


class LoraDelta(nn.Module):
    """``B(A(dropout(x))) · α/r`` with B zero at start, so an adapted layer first equals the pretrained one."""

    def __init__(self, in_features: int, out_features: int, spec: LoraSpec) -> None:
        super().__init__()
        self.down = nn.Linear(in_features, spec.rank, bias=False)
        self.up = nn.Linear(spec.rank, out_features, bias=False)
        self.dropout = nn.Dropout(spec.dropout)
        self.scale = spec.alpha / spec.rank
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(self.dropout(x))) * self.scale


class LoraLinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, spec: LoraSpec) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.lora = LoraDelta(base.in_features, base.out_features, spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.lora(x)


class LoraAttention(nn.Module):
    """Batch-first self-attention with the weights of a frozen ``nn.MultiheadAttention`` and LoRA on q/k/v/out."""

    def __init__(self, base: nn.MultiheadAttention, spec: LoraSpec) -> None:
        super().__init__()
        if not base.batch_first or base.in_proj_weight is None:
            raise TypeError("LoRA needs a batch-first nn.MultiheadAttention with packed q/k/v projections")
        self.base = base.requires_grad_(False)
        width = base.embed_dim
        self.lora = nn.ModuleDict(
            {t: LoraDelta(width, width, spec) for t in spec.targets if t in ("q", "k", "v", "out")}
        )

    def _project(self, x: torch.Tensor, which: int, name: str) -> torch.Tensor:
        width = self.base.embed_dim
        weight = self.base.in_proj_weight[which * width : (which + 1) * width]
        bias = (
            self.base.in_proj_bias[which * width : (which + 1) * width] if self.base.in_proj_bias is not None else None
        )
        y = F.linear(x, weight, bias)
        return y + self.lora[name](x) if name in self.lora else y

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, None]:
        """Same call as ``nn.MultiheadAttention`` inside open_clip blocks; attention weights are never returned."""
        n, length, width = query.shape
        heads = self.base.num_heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(n, -1, heads, width // heads).transpose(1, 2)

        q, k, v = (
            split(self._project(x, i, name)) for i, (x, name) in enumerate(((query, "q"), (key, "k"), (value, "v")))
        )
        dropout = self.base.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        out = out.transpose(1, 2).reshape(n, length, width)
        projected = self.base.out_proj(out)
        return (projected + self.lora["out"](out) if "out" in self.lora else projected), None


def add_lora(blocks: list[nn.Module], spec: LoraSpec) -> int:
    """Put adapters on the named layers of each open_clip block (frozen by the caller); returns how many layers."""
    adapted = 0
    for block in blocks:
        if any(t in spec.targets for t in ("q", "k", "v", "out")):
            block.attn = LoraAttention(block.attn, spec)
            adapted += len(block.attn.lora)
        for target, name in (("mlp_fc", "c_fc"), ("mlp_proj", "c_proj")):
            if target in spec.targets:
                setattr(block.mlp, name, LoraLinear(getattr(block.mlp, name), spec))
                adapted += 1
    return adapted


def lora_layers(module: nn.Module) -> dict[str, LoraDelta]:
    """Every adapter inside ``module`` by its qualified name, for inspection and tests."""
    return {name: m for name, m in module.named_modules() if isinstance(m, LoraDelta)}
