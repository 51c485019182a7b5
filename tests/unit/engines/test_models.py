"""Detector models: the tiny demo recipe end to end, freezing, the head's shape, training-time feature noise,
loading local tower weights, and (once) the full-size SigLIP-2 B/16 shape with random weights and no network."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from deepsift.engines.errors import EngineError
from deepsift.engines.models import DETECTORS, build_detector
from deepsift.engines.models.backbones import build_image_tower, load_tower_weights, set_trainable_blocks, tower_blocks
from deepsift.engines.models.siglip_binary import SiglipBinaryDetector
from deepsift.engines.recipes import Recipe, load_recipe, recipe_names

TINY = load_recipe("demo-tiny")
SIZE = TINY.input.size


def tiny(**sections: dict[str, Any]) -> Recipe:
    """The demo-tiny recipe with some fields of some sections replaced."""
    data = TINY.model_dump()
    for section, fields in sections.items():
        data[section] = data[section] | fields
    return Recipe.model_validate(data)


def build(recipe: Recipe, seed: int = 0) -> SiglipBinaryDetector:
    torch.manual_seed(seed)
    return build_detector(recipe)


def pixels(n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def trainable(module: nn.Module) -> set[str]:
    return {name for name, p in module.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("detector", DETECTORS.names())
def test_every_registered_detector_gives_one_logit_per_image(detector: str) -> None:
    # Given the smallest shipped recipe of each registered detector kind (its tiny form)
    recipe = min((load_recipe(n) for n in recipe_names()), key=lambda r: (r.detector != detector, r.input.size))
    model = build(recipe).eval()
    size = recipe.input.size

    # When a batch of 3 images goes through it, then there is one finite logit per image
    with torch.no_grad():
        logits = model(torch.rand(3, 3, size, size) * 2 - 1)
    assert logits.shape == (3,) and torch.isfinite(logits).all()
    with torch.no_grad():
        assert model(torch.rand(1, 3, size, size)).shape == (1,)


def test_the_demo_recipe_builds_the_detector_it_names() -> None:
    model = build(TINY)
    assert isinstance(model, SiglipBinaryDetector)
    assert len(tower_blocks(model.tower)) == TINY.backbone.vision_cfg["layers"]


def test_the_embedding_is_l2_normalised() -> None:
    with torch.no_grad():
        features = build(TINY).eval().embed(pixels(4))
    assert features.shape == (4, TINY.backbone.embed_dim)
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(4))


def test_a_frozen_tower_trains_only_the_head() -> None:
    # Given unfreeze_last_blocks = 0
    model = build(tiny(backbone={"unfreeze_last_blocks": 0}))

    # Then no tower parameter is trainable and every head parameter is
    assert not trainable(model.tower)
    assert trainable(model.head) == {name for name, _ in model.head.named_parameters()}
    assert trainable(model.head)


def test_unfreezing_two_blocks_trains_exactly_the_last_two() -> None:
    # Given the tiny tower (at least 3 blocks) with unfreeze_last_blocks = 2
    model = build(tiny(backbone={"unfreeze_last_blocks": 2}))
    blocks = tower_blocks(model.tower)
    assert len(blocks) >= 3

    # Then the trainable tower parameters are those of the last two blocks and of the layers after them
    # (open_clip's ln_post and proj), and none of the earlier blocks or the embeddings
    post = {id(p) for name, p in model.tower.named_parameters() if name.startswith("ln_post") or name == "proj"}
    expected = {id(p) for block in blocks[-2:] for p in block.parameters()} | post
    assert post and {id(p) for p in model.tower.parameters() if p.requires_grad} == expected
    assert not any(p.requires_grad for block in blocks[:-2] for p in block.parameters())
    assert not model.tower.conv1.weight.requires_grad and not model.tower.positional_embedding.requires_grad


def test_unfreezing_all_blocks_trains_the_whole_tower() -> None:
    model = build(tiny(backbone={"unfreeze_last_blocks": -1}))
    assert trainable(model.tower) == {name for name, _ in model.tower.named_parameters()}


def test_a_gradient_reaches_only_trainable_parameters() -> None:
    # Given one block unfrozen, when a loss is backpropagated, then frozen parameters get no gradient
    model = build(tiny(backbone={"unfreeze_last_blocks": 1}))
    model(pixels(2)).sum().backward()
    blocks = tower_blocks(model.tower)
    assert all(p.grad is not None for p in blocks[-1].parameters())
    assert all(p.grad is None for p in blocks[0].parameters())


def test_a_512_hidden_head_is_linear_d_512_then_linear_512_1() -> None:
    # Given a head with hidden [512] on the d-wide tiny tower
    model = build(tiny(head={"hidden": [512]}))

    # Then its linear layers are d→512 and 512→1, with ReLU and dropout between
    layers = list(model.head.mlp)
    linears = [(m.in_features, m.out_features) for m in layers if isinstance(m, nn.Linear)]
    assert linears == [(TINY.backbone.embed_dim, 512), (512, 1)]
    assert [type(m) for m in layers] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert layers[2].p == TINY.head.dropout


def test_training_mode_adds_feature_noise_and_eval_is_deterministic() -> None:
    # Given all dropout off, so that feature noise is the only source of randomness
    model = build(tiny(head={"dropout": 0.0, "feature_dropout": 0.0, "feature_noise_std": 0.05}))
    x = pixels(4)

    # When the same batch goes through twice in training mode, then the logits differ
    with torch.no_grad():
        model.train()
        first, second = model(x), model(x)
        model.eval()
        third, fourth = model(x), model(x)
    assert not torch.allclose(first, second)
    # and in eval mode they are identical
    torch.testing.assert_close(third, fourth, rtol=0, atol=0)


def test_without_noise_or_dropout_training_mode_is_deterministic() -> None:
    # The control for the test above: with noise 0 the two training-mode calls agree, and match eval mode
    model = build(tiny(head={"dropout": 0.0, "feature_dropout": 0.0, "feature_noise_std": 0.0}))
    x = pixels(4)
    with torch.no_grad():
        model.train()
        first, second = model(x), model(x)
        model.eval()
        evaluated = model(x)
    torch.testing.assert_close(first, second)
    torch.testing.assert_close(first, evaluated)


# --- local tower weights --------------------------------------------------------------------------------------


def save_checkpoint(tower: nn.Module, path: Path, prefix: str = "visual.", wrap: bool = False) -> Path:
    state = {prefix + k: v.detach().clone().contiguous() for k, v in tower.state_dict().items()}
    state["text.token_embedding.weight"] = torch.zeros(4, 4)  # a full open_clip checkpoint has a text tower too
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"state_dict": state} if wrap else state, path)
    return path


def tower_output(model: SiglipBinaryDetector, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval().tower(x)


@pytest.mark.parametrize(
    ("file_name", "wrap"),
    [("tower.safetensors", False), ("tower.pt", False), ("tower.pt", True), ("open_clip_model.safetensors", False)],
)
def test_a_saved_visual_state_dict_restores_identical_outputs(tmp_path: Path, file_name: str, wrap: bool) -> None:
    # Given a trained-looking tower saved as a full open_clip checkpoint (visual.* and text.* keys)
    source = build(TINY, seed=1)
    checkpoint = save_checkpoint(source.tower, tmp_path / file_name, wrap=wrap)
    x = pixels(2)
    assert not torch.allclose(tower_output(build(TINY, seed=2), x), tower_output(source, x))  # seeds differ

    # When a recipe names the file (or, for open_clip's file name, its folder) as backbone weights
    weights = tmp_path if file_name.startswith("open_clip_model") else checkpoint
    restored = build(tiny(backbone={"weights": str(weights)}), seed=2)

    # Then the rebuilt tower gives exactly the source tower's outputs
    torch.testing.assert_close(tower_output(restored, x), tower_output(source, x), rtol=0, atol=0)


def test_a_tower_only_state_dict_also_loads(tmp_path: Path) -> None:
    source = build(TINY, seed=1)
    path = tmp_path / "bare.pt"
    torch.save(source.tower.state_dict(), path)
    tower, _ = build_image_tower(TINY.backbone)
    load_tower_weights(tower, path)
    x = pixels(2)
    with torch.no_grad():
        torch.testing.assert_close(tower.eval()(x), tower_output(source, x), rtol=0, atol=0)


def test_a_checkpoint_with_missing_keys_is_refused(tmp_path: Path) -> None:
    source = build(TINY, seed=1)
    last = f"resblocks.{len(tower_blocks(source.tower)) - 1}."
    state = {f"visual.{k}": v for k, v in source.tower.state_dict().items() if last not in k}
    assert len(state) < len(source.tower.state_dict())
    torch.save(state, tmp_path / "partial.pt")
    tower, _ = build_image_tower(TINY.backbone)
    with pytest.raises(EngineError, match="missing keys"):
        load_tower_weights(tower, tmp_path / "partial.pt")


def test_a_checkpoint_of_another_tower_is_refused(tmp_path: Path) -> None:
    # Given the weights of a tower with the same key names but another width
    width = TINY.backbone.vision_cfg["width"] + 32
    other = tiny(backbone={"vision_cfg": TINY.backbone.vision_cfg | {"width": width}, "embed_dim": width})
    checkpoint = save_checkpoint(build(other).tower, tmp_path / "other.safetensors")

    # When a tiny tower loads them, then the load is refused as an engine error, not a bare RuntimeError
    tower, _ = build_image_tower(TINY.backbone)
    with pytest.raises(EngineError, match="does not fit"):
        load_tower_weights(tower, checkpoint)


def test_a_checkpoint_without_visual_keys_is_refused(tmp_path: Path) -> None:
    torch.save({"text.weight": torch.zeros(2)}, tmp_path / "text.pt")
    tower, _ = build_image_tower(TINY.backbone)
    with pytest.raises(EngineError, match="unexpected"):
        load_tower_weights(tower, tmp_path / "text.pt")


@pytest.mark.parametrize("where", ["missing.safetensors", "empty_dir"])
def test_weights_that_are_not_there_are_refused(tmp_path: Path, where: str) -> None:
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(EngineError):
        build_detector(tiny(backbone={"weights": str(tmp_path / where)}))


def test_an_unknown_inline_tower_key_is_refused_at_build() -> None:
    # vision_cfg is handed to open_clip's CLIPVisionCfg, which refuses fields it does not know
    recipe = tiny(backbone={"vision_cfg": TINY.backbone.vision_cfg | {"layerz": 2}})
    with pytest.raises(TypeError, match="layerz"):
        build_detector(recipe)


def test_an_unknown_open_clip_config_is_refused() -> None:
    recipe = tiny(backbone={"vision_cfg": None, "embed_dim": None, "open_clip": "ViT-Nope-99"})
    with pytest.raises(KeyError, match="ViT-Nope-99"):
        build_detector(recipe)


# --- full size ------------------------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to resolve a host or open a connection fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def test_the_b16_recipe_builds_a_768_wide_tower_with_random_weights_and_no_network(no_network: None) -> None:
    # Given the SigLIP-2 B/16 recipe (no weights path) and no network, when it is built on CPU
    recipe = load_recipe("siglip2-binary-b16-224")
    model = build(recipe)

    # Then the tower is the timm-backed 768-wide SigLIP-2, frozen, and the head is 768 → 256 → 1
    linears = [(m.in_features, m.out_features) for m in model.head.mlp if isinstance(m, nn.Linear)]
    assert linears == [(768, 256), (256, 1)]
    assert len(tower_blocks(model.tower)) == 12 and not trainable(model.tower)
    with torch.no_grad():
        features = model.eval().embed(torch.zeros(1, 3, recipe.input.size, recipe.input.size))
    assert features.shape == (1, 768)

    # And unfreezing two blocks of a timm-backed tower frees its last two blocks, the final norm and the
    # attention-pooling head, and nothing before them
    set_trainable_blocks(model.tower, 2)
    blocks = tower_blocks(model.tower)
    post_prefixes = ("trunk.norm.", "trunk.attn_pool.", "trunk.fc_norm.", "trunk.head.")
    post = {id(p) for name, p in model.tower.named_parameters() if name.startswith(post_prefixes)}
    assert (
        post
        and {id(p) for p in model.tower.parameters() if p.requires_grad}
        == {id(p) for block in blocks[-2:] for p in block.parameters()} | post
    )
    assert not model.tower.trunk.patch_embed.proj.weight.requires_grad
