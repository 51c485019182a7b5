"""OpenCLIP image towers built from a recipe's ``BackboneSpec`` — never fetched from a hub.

Named SigLIP-2 configs (``ViT-B-16-SigLIP2-256`` …) build with random weights unless the spec points
at a local checkpoint; tiny towers for tests and the demo are declared inline in their recipe.

The activation follows the weights: OpenAI's CLIP was trained with QuickGELU, and its weights in a GELU tower give
other features with no error. ``uses_quick_gelu`` reads it from the recipe (``quick_gelu``, ``weights_tag``, a
``*-quickgelu`` config); a checkpoint recognisably OpenAI's (its TorchScript ``.pt`` archive, whose state dict is
extracted, or its extra keys) is refused by a GELU tower with what to set.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from deepsift.engines.errors import EngineError
from deepsift.engines.recipes import BackboneSpec

_CHECKPOINT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "model.safetensors")
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")  # OpenAI's archives hold them as tensors
_ACTIVATION_NAMES = {"QuickGELU": "quick_gelu", "GELUTanh": "gelu_tanh", "GELU": "gelu"}


def _model_config(name: str) -> dict:
    import open_clip

    config = open_clip.get_model_config(name)
    if config is None:
        raise KeyError(f"open_clip has no model config {name!r}")
    return dict(config)


def uses_quick_gelu(spec: BackboneSpec) -> bool:
    """Whether the towers use QuickGELU, as their weights were trained. The recipe's ``quick_gelu``, the open_clip
    pretrained config of its ``weights_tag`` (OpenAI's says QuickGELU) and a ``*-quickgelu`` config name each say so;
    with none of them it is GELU, and where two disagree the recipe is refused."""
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    claims: dict[str, bool] = {}
    if spec.quick_gelu is not None:
        claims["backbone.quick_gelu"] = spec.quick_gelu
    if spec.open_clip is not None and spec.weights_tag is not None:
        pretrained = get_pretrained_cfg(spec.open_clip, spec.weights_tag)
        if not pretrained:
            tags = ", ".join(list_pretrained_tags_by_model(spec.open_clip)) or "none"
            raise ValueError(f"open_clip has no pretrained tag {spec.weights_tag!r} for {spec.open_clip!r} ({tags})")
        claims[f"backbone.weights_tag {spec.weights_tag!r}"] = bool(pretrained.get("quick_gelu", False))
    if spec.open_clip is not None and _model_config(spec.open_clip).get("quick_gelu", False):
        claims[f"open_clip config {spec.open_clip!r}"] = True
    if len(set(claims.values())) > 1:
        said = ", ".join(f"{source} says {'QuickGELU' if value else 'GELU'}" for source, value in claims.items())
        raise ValueError(f"the backbone's activation is contradictory: {said}")
    return any(claims.values())


def _check_native_tower(vision_cfg: dict, quick_gelu: bool) -> None:
    """timm-backed towers (SigLIP) keep timm's activation: a QuickGELU asked of one would be silently ignored."""
    if quick_gelu and vision_cfg.get("timm_model_name"):
        raise ValueError(f"the timm tower {vision_cfg['timm_model_name']!r} has timm's activation; quick_gelu is moot")


def build_image_tower(spec: BackboneSpec) -> tuple[nn.Module, int]:
    """Return the image tower and the width of its pooled embedding."""
    from open_clip.model import CLIPVisionCfg, _build_vision_tower

    quick_gelu = uses_quick_gelu(spec)
    if spec.open_clip is not None:
        config = _model_config(spec.open_clip)
        vision_cfg, embed_dim = dict(config["vision_cfg"]), int(config["embed_dim"])
    else:
        vision_cfg, embed_dim = dict(spec.vision_cfg or {}), int(spec.embed_dim or 0)
    if spec.image_size is not None:
        vision_cfg["image_size"] = spec.image_size
    _check_native_tower(vision_cfg, quick_gelu)
    tower = _build_vision_tower(embed_dim, CLIPVisionCfg(**vision_cfg), quick_gelu=quick_gelu)
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


def is_torchscript_archive(path: Path) -> bool:
    """TorchScript archives (OpenAI's CLIP ``.pt`` files) are zips that hold ``constants.pkl`` beside their code."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.rsplit("/", 1)[-1] == "constants.pkl" for name in archive.namelist())


def _torchscript_state_dict(checkpoint: Path) -> dict[str, torch.Tensor]:
    try:
        with warnings.catch_warnings():  # torch.jit is deprecated, and it is what OpenAI's archives are
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated", category=FutureWarning)
            archive = torch.jit.load(str(checkpoint), map_location="cpu")
    except (RuntimeError, ValueError) as e:
        raise EngineError(
            f"{checkpoint} is a TorchScript archive torch {torch.__version__} cannot load ({e}); where it loads, "
            "save its weights with torch.save(torch.jit.load(path, map_location='cpu').state_dict(), 'clip.pt') "
            "and point backbone.weights at that file"
        ) from e
    return dict(archive.state_dict())


def openai_state_dict(state: dict[str, torch.Tensor], checkpoint: Path) -> dict[str, torch.Tensor]:
    """OpenAI's CLIP state dict in open_clip's names, as open_clip's ``build_model_from_openai_state_dict`` reads it:
    the ViT parameters keep their names, the input size, context length and vocabulary size kept as tensors are
    dropped, and fp16 weights become fp32. OpenAI's ResNet towers are refused."""
    if "visual.attnpool.positional_embedding" in state:
        raise EngineError(f"{checkpoint} is OpenAI's ResNet CLIP; deepsift builds ViT towers (use ViT-B/32, ViT-L/14)")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items() if k not in OPENAI_EXTRA_KEYS}


def _read_state_dict(checkpoint: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """A state dict from a .safetensors file, a torch checkpoint (optionally under ``state_dict``) or OpenAI's
    TorchScript archive, and whether it is OpenAI's own (the archive or its extra keys: trained with QuickGELU)."""
    if checkpoint.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(checkpoint)), False
    if is_torchscript_archive(checkpoint):
        return openai_state_dict(_torchscript_state_dict(checkpoint), checkpoint), True
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    if any(key in state for key in OPENAI_EXTRA_KEYS):
        return openai_state_dict(state, checkpoint), True
    return state, False


def _check_openai_activation(model: nn.Module, checkpoint: Path, openai: bool) -> None:
    if openai and tower_activation(model) != "quick_gelu":
        raise EngineError(
            f"{checkpoint} is OpenAI's CLIP, trained with QuickGELU, but the recipe builds {tower_activation(model)} "
            "towers: set backbone.weights_tag to 'openai' (or backbone.quick_gelu to true, or name the open_clip "
            "config '<name>-quickgelu')"
        )


def load_tower_weights(tower: nn.Module, path: Path) -> None:
    """Load a full open_clip checkpoint (``visual.*`` keys) or a tower-only state dict into ``tower``."""
    checkpoint = _resolve_checkpoint(path)
    state, openai = _read_state_dict(checkpoint)
    _check_openai_activation(tower, checkpoint, openai)
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


def tower_activation(model: nn.Module) -> str | None:
    """The MLP activation of the transformer blocks in ``model`` as built — ``quick_gelu`` (OpenAI CLIP), ``gelu``,
    ``gelu_tanh`` (SigLIP) — for the engine manifest; kinds that differ are joined by '+', None: no such blocks."""
    found: set[str] = set()
    for module in model.modules():  # open_clip's ResidualAttentionBlock (mlp.gelu) and timm's Block (mlp.act)
        mlp = getattr(module, "mlp", None) if hasattr(module, "attn") else None
        act = getattr(mlp, "gelu", None) if hasattr(mlp, "gelu") else getattr(mlp, "act", None)
        if isinstance(act, nn.Module):
            name = _ACTIVATION_NAMES.get(type(act).__name__, type(act).__name__.lower())
            found.add(f"gelu_{act.approximate}" if isinstance(act, nn.GELU) and act.approximate != "none" else name)
    return "+".join(sorted(found)) or None


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
    from open_clip.model import CLIP

    quick_gelu = uses_quick_gelu(spec)
    if spec.open_clip is not None:
        config = _model_config(spec.open_clip)
        if spec.image_size is not None:
            config["vision_cfg"] = {**config["vision_cfg"], "image_size": spec.image_size}
        if config.get("custom_text") or "hf_tokenizer_name" in config.get("text_cfg", {}):
            raise ValueError(f"{spec.open_clip}: only CLIP models with open_clip's bundled BPE tokenizer are supported")
        _check_native_tower(config["vision_cfg"], quick_gelu)
        model = CLIP(**{**config, "quick_gelu": quick_gelu})
        embed_dim = int(config["embed_dim"])
    else:
        vision_cfg = {**(spec.vision_cfg or {}), **({"image_size": spec.image_size} if spec.image_size else {})}
        embed_dim = int(spec.embed_dim or 0)
        model = CLIP(embed_dim, vision_cfg=vision_cfg, text_cfg=dict(spec.text_cfg or {}), quick_gelu=quick_gelu)
    if spec.weights:
        load_clip_weights(model, Path(spec.weights))
    return model, embed_dim


def load_clip_weights(model: nn.Module, path: Path) -> None:
    """Load a full open_clip CLIP checkpoint, or OpenAI's (its TorchScript ``.pt`` too) into a QuickGELU model;
    refuse one that does not fit (missing or unexpected keys)."""
    checkpoint = _resolve_checkpoint(path)
    state, openai = _read_state_dict(checkpoint)
    _check_openai_activation(model, checkpoint, openai)
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
