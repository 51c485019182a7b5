"""OpenCLIP image towers built from a recipe's ``BackboneSpec`` — never fetched from a hub.

Named SigLIP-2 configs (``ViT-B-16-SigLIP2-256`` …) build with random weights unless the spec points
at a local checkpoint; tiny towers for tests and the demo are declared inline in their recipe.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from deepsift.engines.errors import EngineError
from deepsift.engines.recipes import BackboneSpec

_CHECKPOINT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "model.safetensors")


def build_image_tower(spec: BackboneSpec) -> tuple[nn.Module, int]:
    """Return the image tower and the width of its pooled embedding."""
    import open_clip
    from open_clip.model import CLIPVisionCfg, _build_vision_tower

    if spec.open_clip is not None:
        config = open_clip.get_model_config(spec.open_clip)
        if config is None:
            raise KeyError(f"open_clip has no model config {spec.open_clip!r}")
        vision_cfg, embed_dim = dict(config["vision_cfg"]), int(config["embed_dim"])
    else:
        vision_cfg, embed_dim = dict(spec.vision_cfg or {}), int(spec.embed_dim or 0)
    if spec.image_size is not None:
        vision_cfg["image_size"] = spec.image_size
    tower = _build_vision_tower(embed_dim, CLIPVisionCfg(**vision_cfg))
    if spec.weights:
        load_tower_weights(tower, Path(spec.weights))
    return tower, embed_dim


def _resolve_checkpoint(path: Path) -> Path:
    if path.is_dir():
        for name in _CHECKPOINT_NAMES:
            if (path / name).exists():
                return path / name
        raise EngineError(f"no open_clip checkpoint ({', '.join(_CHECKPOINT_NAMES)}) in {path}")
    if not path.exists():
        raise EngineError(f"backbone weights not found: {path}")
    return path


def _read_state_dict(checkpoint: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file or a torch checkpoint (optionally under ``state_dict``)."""
    if checkpoint.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(checkpoint))
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return state.get("state_dict", state)


def load_tower_weights(tower: nn.Module, path: Path) -> None:
    """Load a full open_clip checkpoint (``visual.*`` keys) or a tower-only state dict into ``tower``."""
    checkpoint = _resolve_checkpoint(path)
    state = _read_state_dict(checkpoint)
    visual = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    try:
        missing, unexpected = tower.load_state_dict(visual or state, strict=False)
    except RuntimeError as e:  # right names, wrong shapes (another tower size)
        raise EngineError(f"{checkpoint} does not fit the tower: {e}") from e
    if missing or unexpected:
        raise EngineError(
            f"{checkpoint} does not fit the tower: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )


def tower_blocks(tower: nn.Module) -> list[nn.Module]:
    """The transformer blocks of an open_clip tower, native or timm-backed, in depth order."""
    trunk = getattr(tower, "trunk", None)
    if trunk is not None and hasattr(trunk, "blocks"):
        return list(trunk.blocks)
    transformer = getattr(tower, "transformer", None)
    if transformer is not None and hasattr(transformer, "resblocks"):
        return list(transformer.resblocks)
    raise TypeError(f"cannot find transformer blocks in {type(tower).__name__}")


_POST_BLOCK_NAMES = ("ln_post", "proj", "attn_pool", "attn_pool_contrastive", "ln_contrastive", "head",
                     "trunk.norm", "trunk.fc_norm", "trunk.attn_pool", "trunk.head")  # fmt: skip


def post_block_parameters(tower: nn.Module) -> list[nn.Parameter]:
    """Parameters of the layers after the last block (final norm, pooling head, projection), native or timm."""
    found = []
    for name, parameter in tower.named_parameters():
        if any(name == p or name.startswith(p + ".") for p in _POST_BLOCK_NAMES):
            found.append(parameter)
    return found


def set_trainable_blocks(tower: nn.Module, last_blocks: int) -> None:
    """Freeze the tower, then unfreeze its last ``last_blocks`` blocks and the layers after them, so no frozen
    layer sits between trained blocks and the detector head. ``-1`` trains the whole tower."""
    tower.requires_grad_(last_blocks == -1)
    if last_blocks > 0:
        for block in tower_blocks(tower)[-last_blocks:]:
            block.requires_grad_(True)
        for parameter in post_block_parameters(tower):
            parameter.requires_grad_(True)


def build_clip(spec: BackboneSpec) -> tuple[nn.Module, int]:
    """Return a whole open_clip CLIP model (image and text towers) and its embedding width.

    Named configs build with random weights and load ``spec.weights`` (a full CLIP checkpoint) when given;
    inline towers are declared by ``vision_cfg`` + ``text_cfg``. Nothing is fetched from a hub.
    """
    import open_clip
    from open_clip.model import CLIP

    if spec.open_clip is not None:
        config = open_clip.get_model_config(spec.open_clip)
        if config is None:
            raise KeyError(f"open_clip has no model config {spec.open_clip!r}")
        config = dict(config)
        if spec.image_size is not None:
            config["vision_cfg"] = {**config["vision_cfg"], "image_size": spec.image_size}
        if config.get("custom_text") or "hf_tokenizer_name" in config.get("text_cfg", {}):
            raise ValueError(f"{spec.open_clip}: only CLIP models with open_clip's bundled BPE tokenizer are supported")
        config.pop("quick_gelu", None)
        model = CLIP(**config)
        embed_dim = int(config["embed_dim"])
    else:
        vision_cfg = {**(spec.vision_cfg or {}), **({"image_size": spec.image_size} if spec.image_size else {})}
        model = CLIP(embed_dim=int(spec.embed_dim or 0), vision_cfg=vision_cfg, text_cfg=dict(spec.text_cfg or {}))
        embed_dim = int(spec.embed_dim or 0)
    if spec.weights:
        load_clip_weights(model, Path(spec.weights))
    return model, embed_dim


def load_clip_weights(model: nn.Module, path: Path) -> None:
    """Load a full open_clip CLIP checkpoint; refuse one that does not fit (missing or unexpected keys)."""
    checkpoint = _resolve_checkpoint(path)
    state = _read_state_dict(checkpoint)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise EngineError(f"{checkpoint} does not fit the CLIP model: {e}") from e
    if missing or unexpected:
        raise EngineError(
            f"{checkpoint} does not fit the CLIP model: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )


def clip_tokenizer(clip: nn.Module) -> object:
    """open_clip's bundled BPE tokenizer (no download), at the text tower's context length."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=int(clip.context_length))


def enable_grad_checkpointing(*towers: nn.Module) -> None:
    """Turn on activation checkpointing in open_clip towers that support it (native and timm-backed)."""
    for tower in towers:
        setter = getattr(tower, "set_grad_checkpointing", None)
        if setter is None:
            raise TypeError(f"{type(tower).__name__} does not support gradient checkpointing")
        setter(True)
