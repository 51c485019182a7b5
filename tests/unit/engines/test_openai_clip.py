"""OpenAI CLIP loads as OpenAI CLIP: QuickGELU towers, from open_clip's hub layouts and from OpenAI's TorchScript
``.pt`` archives, through the recipe path, with the features of open_clip's own model.

The weights are a randomly initialised open_clip ``ViT-B-32-quickgelu`` (nothing is downloaded). OpenAI's archive is
made as OpenAI made theirs: open_clip's model (whose parameter names are OpenAI's) traced with ``torch.jit``, holding
``input_resolution``/``context_length``/``vocab_size`` as tensors and its conv, linear, attention and projection
weights in fp16. Those weights are rounded to fp16 in the reference model first, so the fp32 features compare at 1e-5.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from deepsift.engines.errors import EngineError
from deepsift.engines.manifest import BackendSpec, EngineManifest
from deepsift.engines.models import build_detector
from deepsift.engines.models.backbones import build_image_tower, tower_activation, uses_quick_gelu
from deepsift.engines.recipes import BackboneSpec, load_recipe
from deepsift.trainer.build import _manifest

TOLERANCE = 1e-5
OPENAI_EXTRAS = {"input_resolution": 224, "context_length": 77, "vocab_size": 49408}
FP32_IN_OPENAI = ("class_embedding", "positional_embedding", "token_embedding.weight", "logit_scale")


def _kept_fp32(name: str) -> bool:
    """OpenAI's archives keep layer norms, embeddings and the logit scale in fp32 and the rest in fp16."""
    return ".ln_" in name or name.startswith("ln_") or name.endswith(FP32_IN_OPENAI)


@pytest.fixture(scope="module")
def reference() -> nn.Module:
    """open_clip's own ViT-B-32-quickgelu, random, its fp16-stored weights rounded to fp16."""
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not _kept_fp32(name):
                parameter.copy_(parameter.half().float())
    return model


@pytest.fixture(scope="module")
def checkpoints(reference: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The reference saved as the timm/ hub folder, as open_clip's .bin and as OpenAI's TorchScript archive."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("clip")
    (root / "hub").mkdir()
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    save_file(state, str(root / "hub" / "open_clip_model.safetensors"))
    torch.save(state, root / "open_clip_pytorch_model.bin")
    return {
        "timm_hub_folder": root / "hub",
        "open_clip_bin": root / "open_clip_pytorch_model.bin",
        "openai_torchscript": openai_torchscript(reference, root / "ViT-B-32.pt"),
    }


def openai_torchscript(reference: nn.Module, path: Path) -> Path:
    model = copy.deepcopy(reference)
    for key, value in OPENAI_EXTRAS.items():  # open_clip keeps two of them as ints, OpenAI's archives as tensors
        if hasattr(model, key):
            delattr(model, key)
        model.register_buffer(key, torch.tensor(value))
    mask = model._buffers.pop("attn_mask")  # OpenAI's causal mask is a plain tensor, a constant of the trace
    model.attn_mask = mask
    inputs = {"encode_image": (torch.zeros(1, 3, 224, 224),), "encode_text": (torch.zeros(1, 77, dtype=torch.long),)}
    archive = torch.jit.trace_module(model, inputs, check_trace=False)
    with torch.no_grad():
        for name, parameter in archive.named_parameters():
            if not _kept_fp32(name):
                parameter.data = parameter.data.half()
    assert set(archive.state_dict()) == set(reference.state_dict()) | set(OPENAI_EXTRAS)  # OpenAI's key layout
    assert archive.state_dict()["visual.conv1.weight"].dtype == torch.float16  # and its dtypes
    torch.jit.save(archive, str(path))
    return path


def images() -> torch.Tensor:
    return torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(3)) * 2 - 1


def tokens() -> torch.Tensor:
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()(["a photo of a face swapping.", "a photo of a real face."])


def fusion(backbone: dict[str, Any]) -> nn.Module:
    """Seed 001's shipped recipe with ``backbone`` (as ``--backbone-weights`` overrides it) and a small ResNet."""
    recipe = load_recipe(
        "clip-resnet101-fusion",
        backbone={"with_text": True, **backbone},
        cnn={"block": "basic", "layers": [1, 1, 1, 1], "out_dim": 64},
    )
    return build_detector(recipe).eval()


def assert_same_features(clip: nn.Module, reference: nn.Module) -> None:
    with torch.no_grad():
        for encode in ("encode_image", "encode_text"):
            inputs = images() if encode == "encode_image" else tokens()
            expected = getattr(reference, encode)(inputs)
            torch.testing.assert_close(getattr(clip, encode)(inputs), expected, atol=TOLERANCE, rtol=0)


LAYOUTS = [
    ("timm_hub_folder", {"open_clip": "ViT-B-32-quickgelu"}),
    ("open_clip_bin", {"open_clip": "ViT-B-32", "quick_gelu": True}),
    ("openai_torchscript", {"open_clip": "ViT-B-32", "weights_tag": "openai"}),  # as the shipped recipe says
]


@pytest.mark.slow
@pytest.mark.parametrize(("layout", "backbone"), LAYOUTS)
def test_openai_clip_loads_through_the_recipe_with_open_clips_features(
    checkpoints: dict[str, Path], reference: nn.Module, layout: str, backbone: dict[str, Any]
) -> None:
    # Given the weights in one layout and a recipe that says (by config name, key or tag) they are QuickGELU weights
    detector = fusion({**backbone, "weights": str(checkpoints[layout])})

    # Then the towers are QuickGELU and give open_clip's image and text features
    assert tower_activation(detector.clip) == "quick_gelu"
    assert_same_features(detector.clip, reference)


@pytest.mark.slow
def test_sd2_loads_openai_clip_with_open_clips_features(checkpoints: dict[str, Path], reference: nn.Module) -> None:
    # Given SD²'s shipped recipe on ViT-B/32 and OpenAI's archive (no LoRA, so the towers are the pretrained ones)
    backbone = {"open_clip": "ViT-B-32", "weights_tag": "openai", "with_text": True}
    recipe = load_recipe("sd2-clip-l14", backbone={**backbone, "weights": str(checkpoints["openai_torchscript"])})

    # When it is built, then its CLIP gives open_clip's features
    assert_same_features(build_detector(recipe).eval().clip, reference)


@pytest.mark.slow
def test_the_image_tower_alone_loads_openai_weights(checkpoints: dict[str, Path], reference: nn.Module) -> None:
    # Given an image-tower recipe (as seed 000's detectors build) pointed at OpenAI's archive
    spec = BackboneSpec(open_clip="ViT-B-32", weights_tag="openai", weights=str(checkpoints["openai_torchscript"]))

    # When its tower is built, then it gives open_clip's image features
    tower, _ = build_image_tower(spec)
    with torch.no_grad():
        torch.testing.assert_close(tower.eval()(images()), reference.encode_image(images()), atol=TOLERANCE, rtol=0)


@pytest.mark.slow
def test_openai_weights_in_a_gelu_tower_are_refused_with_what_to_set(checkpoints: dict[str, Path]) -> None:
    # Given OpenAI's archive under a recipe that says nothing of the activation (GELU), then it is refused
    with pytest.raises(EngineError, match=r"OpenAI's CLIP, trained with QuickGELU.*weights_tag to 'openai'"):
        fusion({"open_clip": "ViT-B-32", "weights": str(checkpoints["openai_torchscript"])})


@pytest.mark.slow
def test_openai_state_dict_keys_are_recognised_and_refused_by_a_gelu_tower(
    reference: nn.Module, tmp_path: Path
) -> None:
    # Given OpenAI's state dict saved with torch.save (its extra keys and fp16 weights, no TorchScript)
    state = {k: v.half() if not _kept_fp32(k) else v for k, v in reference.state_dict().items()}
    state |= {k: torch.tensor(v) for k, v in OPENAI_EXTRAS.items()}
    torch.save(state, tmp_path / "clip.pt")

    # Then a GELU tower refuses it and a QuickGELU one loads it, dropping the extra keys
    with pytest.raises(EngineError, match="QuickGELU"):
        fusion({"open_clip": "ViT-B-32", "weights": str(tmp_path / "clip.pt")})
    assert_same_features(
        fusion({"open_clip": "ViT-B-32-quickgelu", "weights": str(tmp_path / "clip.pt")}).clip, reference
    )


@pytest.mark.slow
def test_the_same_weights_in_a_gelu_tower_give_other_features(
    checkpoints: dict[str, Path], reference: nn.Module
) -> None:
    # Given the hub file (which cannot tell its activation) under a recipe that says GELU: it loads ...
    clip = fusion({"open_clip": "ViT-B-32", "weights": str(checkpoints["timm_hub_folder"])}).clip

    # ... and its features are not open_clip's: the silent failure the activation keys exist to prevent
    assert tower_activation(clip) == "gelu"
    with torch.no_grad():
        assert (clip.encode_image(images()) - reference.encode_image(images())).abs().max() > 1e-3


def test_a_torchscript_archive_torch_cannot_load_is_refused_with_what_to_do(tmp_path: Path) -> None:
    # Given a file with a TorchScript archive's layout that torch cannot read back
    import zipfile

    with zipfile.ZipFile(tmp_path / "ViT-B-32.pt", "w") as archive:
        archive.writestr("ViT-B-32/constants.pkl", b"not a pickle")
    spec = BackboneSpec(open_clip="ViT-B-32", weights_tag="openai", weights=str(tmp_path / "ViT-B-32.pt"))

    # Then the error says how to extract its state dict
    with pytest.raises(EngineError, match=r"TorchScript archive.*torch\.jit\.load\(path.*state_dict\(\)"):
        build_image_tower(spec)


@pytest.mark.parametrize(
    ("backbone", "quick_gelu"),
    [
        ({"open_clip": "ViT-B-32"}, False),  # open_clip's GELU config
        ({"open_clip": "ViT-B-32-quickgelu"}, True),
        ({"open_clip": "ViT-B-32", "weights_tag": "openai"}, True),  # OpenAI's weights
        ({"open_clip": "ViT-B-32", "weights_tag": "laion2b_s34b_b79k"}, False),  # LAION's, trained with GELU
        ({"open_clip": "ViT-L-14", "weights_tag": "openai"}, True),
        ({"open_clip": "ViT-B-32", "quick_gelu": True}, True),
        ({"vision_cfg": {"layers": 1, "width": 32}, "embed_dim": 8, "quick_gelu": True}, True),
        ({"vision_cfg": {"layers": 1, "width": 32}, "embed_dim": 8}, False),
    ],
)
def test_the_activation_follows_the_config_the_weights_tag_or_the_key(backbone: dict, quick_gelu: bool) -> None:
    assert uses_quick_gelu(BackboneSpec(**backbone)) is quick_gelu


@pytest.mark.parametrize(
    ("backbone", "message"),
    [
        ({"open_clip": "ViT-B-32-quickgelu", "quick_gelu": False}, "contradictory"),
        ({"open_clip": "ViT-B-32", "weights_tag": "openai", "quick_gelu": False}, "contradictory"),
        ({"open_clip": "ViT-B-32", "weights_tag": "no_such_tag"}, "no pretrained tag 'no_such_tag'.*openai"),
    ],
)
def test_a_contradictory_or_unknown_activation_source_is_refused(backbone: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        uses_quick_gelu(BackboneSpec(**backbone))


def test_a_timm_tower_refuses_quick_gelu_it_would_ignore() -> None:
    # SigLIP towers are timm's, with timm's activation: a QuickGELU key there would be silently ignored
    with pytest.raises(ValueError, match="timm's activation"):
        build_image_tower(BackboneSpec(open_clip="ViT-B-16-SigLIP2", quick_gelu=True))


def test_the_manifest_records_the_activation_as_built(tmp_path: Path) -> None:
    # Given the tiny fusion recipe built with QuickGELU towers, and with open_clip's default GELU
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"onnx")
    backend = BackendSpec(name="onnxruntime", version="1")
    for quick_gelu, expected in ((True, "quick_gelu"), (False, "gelu")):
        recipe = load_recipe("tiny-fusion")
        recipe = load_recipe("tiny-fusion", backbone={**recipe.backbone.model_dump(), "quick_gelu": quick_gelu})

        # When its manifest is written, then it records the activation, and reads back with it
        manifest = _manifest(recipe, "tiny", artifact, backend, build_detector(recipe))
        assert manifest.backbone_activation == expected
        manifest.write(tmp_path)
        assert EngineManifest.read(tmp_path).backbone_activation == expected


def test_a_manifest_without_the_activation_still_loads() -> None:
    # Given a manifest written before backbone_activation existed, then it loads, with no activation recorded
    manifest = EngineManifest(
        name="old", recipe="demo-tiny", recipe_sha256="a" * 64, detector="siglip_binary",
        task=load_recipe("demo-tiny").task, input=load_recipe("demo-tiny").input,
        backend=BackendSpec(name="onnxruntime", version="1"), artifact="model.onnx", artifact_sha256="b" * 64,
        weights_sha256="c" * 64,
    )  # fmt: skip
    data = manifest.model_dump(mode="json")
    del data["backbone_activation"]
    assert EngineManifest.model_validate(data).backbone_activation is None


def test_openai_resnet_clip_is_refused_with_what_to_use(tmp_path: Path) -> None:
    # Given OpenAI's ResNet CLIP state dict (its attention-pool tower), then loading it names the ViT checkpoints
    state = {"visual.attnpool.positional_embedding": torch.zeros(50, 64), "input_resolution": torch.tensor(224)}
    torch.save(state, tmp_path / "RN50.pt")
    spec = BackboneSpec(
        vision_cfg={"layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        embed_dim=8,
        weights=str(tmp_path / "RN50.pt"),
    )
    with pytest.raises(EngineError, match=r"ResNet CLIP.*ViT-B/32"):
        build_image_tower(spec)
