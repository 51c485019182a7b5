"""Vision towers at another input size for progressive resizing: inside ``at_input_size`` the position table is read
at the new grid (as timm resamples it), gradients reach the one full-size table, and afterwards the model is
exactly what it was."""

from __future__ import annotations

import copy

import pytest
import torch
from timm.layers import resample_abs_pos_embed

from deepsift.engines.models import build_detector
from deepsift.engines.models.backbones import build_image_tower
from deepsift.engines.models.resolution import at_input_size, check_input_sizes, position_tables
from deepsift.engines.recipes import BackboneSpec, load_recipe


def test_a_native_tower_runs_at_half_size_and_trains_its_full_size_table() -> None:
    # Given the tiny multitask detector (64 px, 8 px patches) and its outputs at full size
    torch.manual_seed(0)
    model = build_detector(load_recipe("tiny-multitask")).eval()
    full = torch.randn(2, 3, 64, 64)
    before = model.outputs(full).mask_logits
    table = model.tower.positional_embedding
    parameters, keys, kind = list(model.parameters()), list(model.state_dict()), type(model.tower)

    # When it runs and back-propagates at 32 px
    with at_input_size(model, 32):
        out = model.outputs(torch.randn(2, 3, 32, 32))
        out.mask_logits.sum().backward()

    # Then the mask is 32×32 and the gradient reached the 8×8 (+ class token) table, the only one there is
    assert out.mask_logits.shape == (2, 32, 32) and table.shape == (65, 96)
    assert table.grad is not None and table.grad.abs().sum() > 0
    # and the model is back as it was: the same parameters in the same order, keys, class and outputs
    assert all(a is b for a, b in zip(parameters, model.parameters(), strict=True))
    assert list(model.state_dict()) == keys and type(model.tower) is kind
    torch.testing.assert_close(model.outputs(full).mask_logits, before)


def test_a_native_tower_at_half_size_equals_one_built_there_with_the_resampled_table() -> None:
    torch.manual_seed(0)
    recipe = load_recipe("tiny-multitask")
    tower, _ = build_image_tower(recipe.backbone)
    small, _ = build_image_tower(recipe.backbone.model_copy(update={"image_size": 32}))
    state = tower.state_dict()
    state["positional_embedding"] = resample_abs_pos_embed(
        state["positional_embedding"][None], new_size=[4, 4], old_size=[8, 8], num_prefix_tokens=1
    )[0]
    small.load_state_dict(state)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), at_input_size(tower.eval(), 32):
        ours = tower(x)
    torch.testing.assert_close(ours, small.eval()(x))


def test_a_timm_siglip_tower_runs_at_half_size_as_timm_resizes_it() -> None:
    # Given a SigLIP-2 B/16 tower built for 256 px (timm-backed, no class token)
    torch.manual_seed(0)
    tower, _ = build_image_tower(BackboneSpec(open_clip="ViT-B-16-SigLIP2-256"))
    tower.eval()
    [table] = position_tables(tower)
    assert (table.name, table.grid, table.prefix_tokens) == ("pos_embed", (16, 16), 0)
    x = torch.randn(1, 3, 128, 128)

    # When it runs at 128 px, and a copy is resized by timm's own set_input_size
    with torch.no_grad(), at_input_size(tower, 128):
        ours = tower.forward_intermediates(x, indices=[3], output_fmt="NCHW")
    reference = copy.deepcopy(tower)
    reference.trunk.set_input_size(img_size=128)

    # Then the features match timm's, the token maps are 8×8, and outside the context 128 px is refused again
    with torch.no_grad():
        torch.testing.assert_close(ours["image_features"], reference(x))
    assert ours["image_intermediates"][0].shape == (1, 768, 8, 8)
    with pytest.raises(AssertionError, match="doesn't match model"):
        tower(x)


def test_a_size_the_patches_do_not_divide_is_refused_before_training() -> None:
    model = build_detector(load_recipe("tiny-multitask"))
    check_input_sizes(model, [32, 48])
    with pytest.raises(ValueError, match="not a multiple of the tower's 8-pixel patches"):
        check_input_sizes(model, [36])


def test_a_cnn_has_no_table_and_the_built_size_changes_nothing() -> None:
    model = build_detector(load_recipe("tiny-multitask"))
    kind = type(model.tower)
    with at_input_size(model, 64), at_input_size(model, None):
        assert type(model.tower) is kind
    fusion = build_detector(load_recipe("tiny-fusion"))
    assert all(t.name == "positional_embedding" for t in position_tables(fusion))  # CLIP's image tower only


def test_a_position_table_it_cannot_resample_is_refused_before_training() -> None:
    # Given a model holding a ViT (resampled) and another module's position table (as a ResNet CLIP's pool has)
    model = build_detector(load_recipe("tiny-multitask"))
    model.pool = torch.nn.Module()
    model.pool.positional_embedding = torch.nn.Parameter(torch.zeros(5, 4))
    with pytest.raises(ValueError, match=r"pool\.positional_embedding .* cannot resample"):
        check_input_sizes(model, [32])
    check_input_sizes(model, [])  # no stage: nothing to refuse


def test_text_towers_are_not_sized() -> None:
    check_input_sizes(build_detector(load_recipe("tiny-sd2")), [32])  # CLIP's text table stays as it is
