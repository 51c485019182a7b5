"""Vision transformers run at another square input size than the one they were built for, for progressive
resizing (seed 000 §2.2: "initially trained on lower-resolution images and later fine-tuned on higher resolutions").

A ViT's only size-bound part is its table of absolute position embeddings, one row per patch of the built grid.
Inside ``at_input_size`` every such table in a model — open_clip's native towers (``positional_embedding``, one class
token) and timm's (``pos_embed``, SigLIP's without a class token) — is read through a parametrization that resamples
it to the new grid (bicubic, timm's ``resample_abs_pos_embed``) on each access. The trained table stays the one
full-size parameter, so gradients at the small size train what serves at the full size; leaving the context puts
the model back exactly as it was (same parameters, state-dict keys and classes).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize


@dataclass(frozen=True)
class PositionTable:
    """Where one ViT keeps its position embeddings, and the grid they were built for."""

    owner: nn.Module
    name: str
    grid: tuple[int, int]
    patch: tuple[int, int]
    prefix_tokens: int  # rows before the grid's (class tokens)
    patch_embed: nn.Module | None  # timm's, whose size check is relaxed inside the context

    def grid_for(self, size: int) -> tuple[int, int]:
        if size % self.patch[0] or size % self.patch[1]:
            raise ValueError(f"input size {size} is not a multiple of the tower's {self.patch[0]}-pixel patches")
        return size // self.patch[0], size // self.patch[1]


def _pair(value: int | Iterable[int]) -> tuple[int, int]:
    a, b = (value, value) if isinstance(value, int) else tuple(value)
    return int(a), int(b)


def position_tables(model: nn.Module) -> list[PositionTable]:
    """The absolute position tables of every vision transformer in ``model`` (text towers have no grid)."""
    found = []
    for module in model.modules():
        table = getattr(module, "positional_embedding", None)
        if isinstance(table, nn.Parameter) and hasattr(module, "grid_size") and hasattr(module, "conv1"):
            found.append(PositionTable(module, "positional_embedding", _pair(module.grid_size),
                                       _pair(module.patch_size), 1, None))  # fmt: skip
        table, embed = getattr(module, "pos_embed", None), getattr(module, "patch_embed", None)
        resizes_itself = getattr(module, "dynamic_img_size", False)  # timm's own dynamic mode resamples already
        if isinstance(table, nn.Parameter) and hasattr(embed, "grid_size") and not resizes_itself:
            prefix = 0 if getattr(module, "no_embed_class", False) else int(getattr(module, "num_prefix_tokens", 0))
            found.append(PositionTable(module, "pos_embed", _pair(embed.grid_size), _pair(embed.patch_size),
                                       prefix, embed))  # fmt: skip
    return found


class _Resampled(nn.Module):
    """A position table (``(rows, C)`` or ``(1, rows, C)``) read at another grid."""

    def __init__(self, old: tuple[int, int], new: tuple[int, int], prefix_tokens: int) -> None:
        super().__init__()
        self.old, self.new, self.prefix_tokens = old, new, prefix_tokens

    def forward(self, table: torch.Tensor) -> torch.Tensor:
        from timm.layers import resample_abs_pos_embed

        batched = table if table.ndim == 3 else table[None]
        out = resample_abs_pos_embed(
            batched, new_size=list(self.new), old_size=list(self.old), num_prefix_tokens=self.prefix_tokens
        )
        return out if table.ndim == 3 else out[0]


def check_input_sizes(model: nn.Module, sizes: Iterable[int]) -> None:
    """Raise ``ValueError`` before training if a stage's size does not fit some tower's patches, or if the model
    holds a position table this module does not resample (a ResNet CLIP's attention pool, say): it would fail, or
    train wrongly, at the first small step. Text towers' tables (``token_embedding`` beside them) are not sized."""
    sizes = list(sizes)
    if not sizes:
        return
    tables = position_tables(model)
    for table in tables:
        for size in sizes:
            table.grid_for(size)
    known = {id(getattr(t.owner, t.name)) for t in tables}
    for name, module in model.named_modules():
        for key in ("positional_embedding", "pos_embed"):
            found = module._parameters.get(key)
            if found is not None and id(found) not in known and not hasattr(module, "token_embedding"):
                raise ValueError(f"{name or 'the model'}.{key} ({type(module).__name__}) is a position table "
                                 "progressive resizing cannot resample; train this recipe without it")  # fmt: skip


@contextmanager
def at_input_size(model: nn.Module, size: int | None) -> Iterator[nn.Module]:
    """``model`` taking ``size``×``size`` inputs inside the block; None (or the built size) changes nothing."""
    entered: list[tuple[PositionTable, bool, list[str]]] = []
    try:
        for table in position_tables(model) if size is not None else ():
            grid = table.grid_for(size)
            if grid == table.grid:
                continue
            order = list(table.owner._parameters)
            parametrize.register_parametrization(
                table.owner, table.name, _Resampled(table.grid, grid, table.prefix_tokens), unsafe=True
            )
            strict = bool(getattr(table.patch_embed, "strict_img_size", False))
            entered.append((table, strict, order))
            if table.patch_embed is not None:
                table.patch_embed.strict_img_size = False
        yield model
    finally:
        for table, strict, order in reversed(entered):
            parametrize.remove_parametrizations(table.owner, table.name, leave_parametrized=False)
            for name in order:  # back in its place: an EMA pairs parameters by their order
                table.owner._parameters[name] = table.owner._parameters.pop(name)
            if table.patch_embed is not None:
                table.patch_embed.strict_img_size = strict
