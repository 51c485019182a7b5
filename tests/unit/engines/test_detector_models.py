"""Every registered detector kind against the engine contract (tiny shipped recipes), and the full-size paper
configurations' shapes with random weights: the SIDA decoder's output resolution, the seed 001 fusion MLP
512-512-1, the SD² LoRA rank on the named layers and the CLAM adapter."""

from __future__ import annotations

import socket

import pytest
import torch
from torch import nn

from deepsift.engines.models import DETECTORS, build_detector
from deepsift.engines.models.lora import LoraAttention, lora_layers
from deepsift.engines.models.outputs import fake_logit_from_class_logits
from deepsift.engines.models.siglip_multitask import MaskDecoder
from deepsift.engines.recipes import MaskDecoderSpec, Recipe, load_recipe, recipe_names


def tiny_recipe(detector: str) -> Recipe:
    """The shipped recipe of a detector kind with the smallest input: its tiny form."""
    recipes = [load_recipe(n) for n in recipe_names()]
    return min((r for r in recipes if r.detector == detector), key=lambda r: r.input.size)


def pixels(n: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("detector", DETECTORS.names())
def test_every_detector_kind_has_a_tiny_recipe_that_meets_the_engine_contract(detector: str) -> None:
    # Given the tiny shipped recipe of each registered kind
    recipe = tiny_recipe(detector)
    torch.manual_seed(0)
    model = build_detector(recipe).eval()

    # When 3 images go through it, then forward gives one finite fake-logit each, equal to outputs().fake_logit
    x = pixels(3, recipe.input.size)
    with torch.no_grad():
        logits = model(x)
        out = model.outputs(x)
    assert logits.shape == (3,) and torch.isfinite(logits).all()
    torch.testing.assert_close(out.fake_logit, logits)
    # and multi-class detectors give one logit per class, mask detectors a mask at the input resolution
    if recipe.task.kind == "multiclass":
        assert out.class_logits.shape == (3, len(recipe.task.class_names))
    if recipe.task.masks:
        assert out.mask_logits.shape == (3, recipe.input.size, recipe.input.size)


def test_the_fake_logit_of_a_multiclass_detector_is_one_minus_p_real() -> None:
    logits = torch.randn(6, 5)
    p_fake = torch.sigmoid(fake_logit_from_class_logits(logits, real_index=2))
    torch.testing.assert_close(p_fake, 1 - torch.softmax(logits, dim=1)[:, 2])


def test_the_mask_decoder_fuses_depths_with_gates_that_sum_to_one() -> None:
    # Given a decoder over 3 depths of 16-wide 4×4 token maps
    decoder = MaskDecoder(16, MaskDecoderSpec(depths=(0, 1, 2), width=8)).eval()
    maps = [torch.randn(2, 16, 4, 4) for _ in range(3)]

    # Then its gates are a softmax over depths per pixel, and the mask comes out at the requested size
    with torch.no_grad():
        gates = torch.softmax(
            decoder.gate(
                torch.cat([s(p(m)) for m, p, s in zip(maps, decoder.project, decoder.smooth, strict=True)], 1)
            ),
            1,
        )
        assert decoder(maps, (32, 32)).shape == (2, 32, 32)
    torch.testing.assert_close(gates.sum(1), torch.ones(2, 4, 4))


def test_a_recipe_section_the_detector_does_not_read_is_refused() -> None:
    # Given the tiny multitask recipe with a prompt (which only the fusion detector reads)
    data = tiny_recipe("siglip_multitask").model_dump()
    data["prompt"] = {"text": "unused"}
    with pytest.raises(ValueError, match="does not use a 'prompt'"):
        build_detector(Recipe.model_validate(data))
    # and without the decoder it needs
    data = tiny_recipe("siglip_multitask").model_dump() | {"decoder": None}
    with pytest.raises(ValueError, match="needs a 'decoder'"):
        build_detector(Recipe.model_validate(data))


def test_lora_starts_as_the_pretrained_model_and_trains_only_adapters_and_the_clam() -> None:
    # Given the tiny SD² detector and the same CLIP without adapters
    recipe = tiny_recipe("sd2")
    torch.manual_seed(0)
    model = build_detector(recipe).eval()
    no_lora = recipe.model_copy(update={"backbone": recipe.backbone.model_copy(update={"lora": None})})
    torch.manual_seed(0)
    plain = build_detector(no_lora).eval()

    # Then the text features agree (LoRA's up-projection starts at zero) ...
    tokens = model.simple_label_tokens
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(tokens), plain.encode_text(tokens), atol=1e-5, rtol=1e-5)
    # ... and only adapters, the CLAM, τ and the SigLIP bias are trainable
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"clip", "clam", "logit_scale", "logit_bias"}
    assert all(".lora." in n for n, p in model.clip.named_parameters() if p.requires_grad)


def test_an_sd2_batch_samples_one_label_per_class() -> None:
    model = build_detector(tiny_recipe("sd2"))
    tokens = model.sample_label_tokens(torch.Generator().manual_seed(0))
    assert tokens.shape[0] == len(model.labels) == 5
    for c, row in enumerate(tokens):
        assert any(torch.equal(row, t) for t in model.label_tokens[c])


def test_the_prototype_detector_follows_equation_4_with_flip_tta() -> None:
    # Given prototypes set from support embeddings of two classes
    model = build_detector(tiny_recipe("prototype_fewshot")).eval()
    x = pixels(4, model.tower.image_size[0])
    with torch.no_grad():
        z = model.embed(x)
        model.set_prototypes(z, torch.tensor([0, 0, 1, 1]))
        probs = model.class_probabilities(x)

    # Then prototypes are unit length and P(c|x) is the flip-averaged softmax of −‖z − p‖²/τ
    torch.testing.assert_close(model.prototypes.norm(dim=1), torch.ones(2))
    with torch.no_grad():
        views = [model.embed(x), model.embed(x.flip(-1))]
    expected = torch.stack(
        [torch.softmax(-(torch.cdist(v, model.prototypes) ** 2) / model.tau, 1) for v in views]
    ).mean(0)
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=1e-4)


# --- full-size paper configurations, random weights, nothing downloaded ------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to resolve a host or open a connection fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def linear_shapes(module: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, nn.Linear)]


@pytest.mark.slow
def test_the_sida_recipe_predicts_3_classes_and_a_mask_at_input_resolution(no_network: None) -> None:
    recipe = load_recipe("siglip2-multitask-b16-256")
    model = build_detector(recipe).eval()
    with torch.no_grad():
        out = model.outputs(pixels(1, 256))
    assert out.class_logits.shape == (1, 3) and out.mask_logits.shape == (1, 256, 256)
    assert model.depths == [2, 5, 8, 11] and len(model.decoder.project) == 4
    assert all(p.requires_grad for p in model.tower.parameters())  # trained end to end (§2.2)


@pytest.mark.slow
def test_the_fusion_recipe_is_clip_b32_and_resnet101_into_an_mlp_512_512_1(no_network: None) -> None:
    model = build_detector(load_recipe("clip-resnet101-fusion")).eval()
    # CLIP image 512 ‖ prompt 512 ‖ ResNet101 512 → 512 → 512 → 1, BatchNorm and dropout 0.4 between
    assert linear_shapes(model.head) == [(1536, 512), (512, 512), (512, 1)]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.head.modules()) == 2
    assert {m.p for m in model.head.modules() if isinstance(m, nn.Dropout)} == {0.4}
    assert [len(stage) for stage in (model.cnn.trunk.layer1, model.cnn.trunk.layer2, model.cnn.trunk.layer3,
                                     model.cnn.trunk.layer4)] == [3, 4, 23, 3]  # fmt: skip
    assert not any(p.requires_grad for p in model.clip.parameters())
    assert all(p.requires_grad for p in model.cnn.parameters())
    with torch.no_grad():
        assert model(pixels(2, 224)).shape == (2,)


@pytest.mark.slow
def test_the_sd2_recipe_puts_rank_8_lora_on_q_k_v_out_of_every_clip_l14_block(no_network: None) -> None:
    model = build_detector(load_recipe("sd2-clip-l14"))
    image_blocks, text_blocks = model.clip.visual.transformer.resblocks, model.clip.transformer.resblocks
    assert len(image_blocks) == 24 and len(text_blocks) == 12
    for block, width in [(b, 1024) for b in image_blocks] + [(b, 768) for b in text_blocks]:
        assert isinstance(block.attn, LoraAttention) and set(block.attn.lora) == {"q", "k", "v", "out"}
        for delta in block.attn.lora.values():
            assert delta.down.weight.shape == (8, width) and delta.up.weight.shape == (width, 8)
            assert delta.scale == 32 / 8 and delta.dropout.p == 0.1
    assert len(lora_layers(model)) == 36 * 4
    # CLAM: attention across the 1024-wide CLS tokens, adapter [1024 ‖ 768] → 768 → 768
    assert model.clam.attention.embed_dim == 1024 and model.clam.attention.num_heads == 8
    assert linear_shapes(model.clam.adapter) == [(1024 + 768, 768), (768, 768)]
