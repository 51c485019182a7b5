"""Detector recipes: every shipped file parses into a frozen, typed recipe; unknown keys are refused; the hash is
canonical. Parametrized over ``recipe_names()`` so a new recipe file is tested without touching this module."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import deepsift.engines.recipes as recipes
from deepsift.engines.models import DETECTORS
from deepsift.engines.recipes import RECIPE_DIR, Recipe, load_recipe, recipe_names

SHIPPED = recipe_names()


def shipped_json(name: str) -> dict[str, Any]:
    return json.loads((RECIPE_DIR / f"{name}.json").read_text())


def write_recipe(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_the_shipped_recipes_are_found() -> None:
    # Given the recipe folder, then recipe_names() finds the demo and the paper's recipes, sorted
    assert {"demo-tiny", "siglip2-binary-b16-224", "siglip2-binary-l16-384-fig1"} <= set(SHIPPED)
    assert sorted(SHIPPED) == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_recipe_parses_under_its_own_name(name: str) -> None:
    # When a shipped recipe is loaded by name
    recipe = load_recipe(name)

    # Then it is named after its file, its detector kind is registered and it survives a JSON round trip
    assert recipe.name == name
    assert recipe.detector in DETECTORS
    again = Recipe.model_validate_json(recipe.canonical_json())
    assert again == recipe and again.sha256 == recipe.sha256


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_recipe_feeds_its_tower_the_size_it_was_built_for(name: str) -> None:
    # Given a shipped recipe, when its tower's image size is looked up (the config, an override or inline)
    import open_clip

    backbone = load_recipe(name).backbone
    if backbone.image_size is not None:
        tower_size = backbone.image_size
    elif backbone.vision_cfg is not None:
        tower_size = backbone.vision_cfg["image_size"]
    else:
        tower_size = open_clip.get_model_config(backbone.open_clip)["vision_cfg"]["image_size"]

    # Then the input contract resizes pixels to exactly that size
    assert load_recipe(name).input.size == tower_size


@pytest.mark.parametrize("section", [None, "task", "backbone", "head", "input", "train"])
@pytest.mark.parametrize("name", SHIPPED)
def test_an_unknown_key_anywhere_is_rejected(tmp_path: Path, name: str, section: str | None) -> None:
    # Given a shipped recipe with one unknown key added at the top level or inside one section
    data = shipped_json(name)
    target = data if section is None else data.setdefault(section, {})
    target["unexpected_knob"] = 1

    # When it is loaded, then validation refuses it and names the key
    with pytest.raises(ValidationError, match="unexpected_knob"):
        load_recipe(write_recipe(tmp_path / "r.json", data))


def test_an_unknown_top_level_override_is_rejected() -> None:
    with pytest.raises(ValidationError, match="epoch"):
        load_recipe("demo-tiny", epoch=3)


def test_a_known_override_replaces_the_section() -> None:
    # When the train section is overridden, then the recipe carries the new values and defaults for the rest
    recipe = load_recipe("demo-tiny", train={"epochs": 7})
    assert recipe.train.epochs == 7 and recipe.train.lr == Recipe.model_fields["train"].default.lr


def test_recipes_are_frozen() -> None:
    recipe = load_recipe("demo-tiny")
    with pytest.raises(ValidationError):
        recipe.name = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        recipe.head.hidden = (1,)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [("head", "dropout", 0.2), ("input", "size", 96), ("train", "lr", 0.5), (None, "description", "changed")],
)
def test_the_hash_changes_when_any_value_changes(tmp_path: Path, section: str | None, key: str, value: Any) -> None:
    # Given the demo recipe and a copy with one value changed
    data = shipped_json("demo-tiny")
    (data if section is None else data[section])[key] = value

    # When both are loaded, then their hashes differ
    changed = load_recipe(write_recipe(tmp_path / "r.json", data))
    assert changed.sha256 != load_recipe("demo-tiny").sha256


def test_the_hash_ignores_key_order_and_formatting(tmp_path: Path) -> None:
    # Given the demo recipe rewritten with every key order reversed (nested ones too) and other whitespace
    def reversed_keys(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: reversed_keys(value[k]) for k in reversed(list(value))}
        return value

    data = reversed_keys(shipped_json("demo-tiny"))
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data, indent=7))
    assert list(data) != list(shipped_json("demo-tiny"))  # the file really is in another order

    # When it is loaded, then the hash equals the shipped recipe's
    assert load_recipe(path).sha256 == load_recipe("demo-tiny").sha256


def test_the_hash_is_the_sha256_of_the_canonical_json() -> None:
    import hashlib

    recipe = load_recipe("demo-tiny")
    canonical = json.dumps(json.loads(recipe.canonical_json()), sort_keys=True, separators=(",", ":"))
    assert recipe.sha256 == hashlib.sha256(canonical.encode()).hexdigest()
    assert len({load_recipe(n).sha256 for n in SHIPPED}) == len(SHIPPED)


def test_the_figure_1_variant_has_a_512_head_and_two_unfrozen_blocks() -> None:
    recipe = load_recipe("siglip2-binary-l16-384-fig1")
    assert recipe.head.hidden == (512,)
    assert recipe.backbone.unfreeze_last_blocks == 2
    assert recipe.backbone.open_clip == "ViT-L-16-SigLIP2-384" and recipe.input.size == 384


def test_the_paper_recipes_keep_the_tower_frozen() -> None:
    # Seed 000 §2.1–2.2: everything except the Figure-1 variant and the demo trains the head only
    frozen = [n for n in SHIPPED if n.startswith("siglip2-binary") and not n.endswith("-fig1")]
    assert frozen and all(load_recipe(n).backbone.unfreeze_last_blocks == 0 for n in frozen)


def test_a_shipped_file_whose_name_differs_from_its_recipe_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a recipe folder holding foo.json that declares the name "bar"
    monkeypatch.setattr(recipes, "RECIPE_DIR", tmp_path)
    data = shipped_json("demo-tiny") | {"name": "bar"}
    write_recipe(tmp_path / "foo.json", data)

    # When it is loaded by name or by path, then it is refused
    with pytest.raises(ValueError, match=r"foo\.json declares name 'bar'"):
        load_recipe("foo")
    with pytest.raises(ValueError, match="must match"):
        load_recipe(tmp_path / "foo.json")


def test_an_unknown_recipe_name_lists_the_shipped_ones() -> None:
    with pytest.raises(KeyError, match="demo-tiny"):
        load_recipe("no-such-recipe")


@pytest.mark.parametrize(
    "backbone",
    [
        {"embed_dim": 8},  # neither source
        {"open_clip": "ViT-B-16-SigLIP2", "vision_cfg": {"layers": 1}, "embed_dim": 8},  # both
        {"vision_cfg": {"layers": 1}},  # inline tower without its width
        {"open_clip": "ViT-B-16-SigLIP2", "unfreeze_last_blocks": -2},
    ],
)
def test_an_ill_formed_backbone_is_rejected(tmp_path: Path, backbone: dict[str, Any]) -> None:
    data = shipped_json("demo-tiny") | {"backbone": backbone}
    with pytest.raises(ValidationError):
        load_recipe(write_recipe(tmp_path / "r.json", data))


def test_the_hidf_recipe_is_the_l16_one() -> None:
    # Seed 000 §2.3 adapts the HiDF detector's encoder with d = 1024: the recipe that claims HiDF is SigLIP-2 L/16
    import open_clip

    hidf = [load_recipe(n) for n in SHIPPED if "hidf" in load_recipe(n).description.lower()]
    assert "siglip2-binary-l16-384" in [r.name for r in hidf]
    for recipe in hidf:
        assert recipe.backbone.open_clip is not None and "L-16-SigLIP2" in recipe.backbone.open_clip
        assert open_clip.get_model_config(recipe.backbone.open_clip)["embed_dim"] == 1024


@pytest.mark.parametrize("name", [n for n in SHIPPED if load_recipe(n).train.loss != "prototype"])
def test_every_trained_recipe_states_its_schedule_and_where_it_comes_from(name: str) -> None:
    # Given a shipped recipe trained by gradient, then its file names the schedule (no silent default) and a note
    # says where it comes from, naming that same schedule
    train = shipped_json(name)["train"]
    assert "schedule" in train
    note = train.get("schedule_note", "")
    assert train["schedule"] in note.lower(), f"{name}: schedule_note {note!r} does not name {train['schedule']}"


@pytest.mark.parametrize("name", ["clip-resnet101-fusion", "sd2-clip-l14"])
def test_the_openai_clip_recipes_build_quick_gelu_towers(name: str) -> None:
    # Seeds 001 and 002 start from OpenAI's CLIP, trained with QuickGELU: the recipes say so by open_clip's tag
    from deepsift.engines.models.backbones import uses_quick_gelu

    backbone = load_recipe(name).backbone
    assert backbone.weights_tag == "openai" and uses_quick_gelu(backbone)


def test_a_weights_tag_needs_a_named_open_clip_config(tmp_path: Path) -> None:
    data = shipped_json("demo-tiny")
    data["backbone"]["weights_tag"] = "openai"
    with pytest.raises(ValidationError, match="weights_tag"):
        load_recipe(write_recipe(tmp_path / "r.json", data))


def test_a_global_batch_sets_the_accumulation_from_the_ranks() -> None:
    # SD²'s 512 (§5.1): 64 on each of 8 GPUs as the paper ran, or 8 micro-batches of 64 on one GPU
    train = load_recipe("sd2-clip-l14").train
    assert (train.batch_size, train.global_batch) == (64, 512)
    assert [train.accumulation(ranks) for ranks in (1, 2, 8)] == [8, 4, 1]
    assert [train.micro_batch(ranks) for ranks in (1, 8)] == [64, 512]  # batch_size is per rank beside global_batch
    with pytest.raises(ValueError, match="not a multiple of batch_size 64 × 3 ranks"):
        train.accumulation(3)
    assert load_recipe("demo-tiny").train.accumulation(4) == 1


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"global_batch": 512, "grad_accumulation": 2}, "not both"),
        ({"global_batch": 100, "batch_size": 64}, "multiple"),
    ],
)
def test_a_global_batch_that_contradicts_the_batch_is_refused(train: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        recipes.TrainSpec(**train)


def test_sd2_reports_the_negatives_of_the_global_batch() -> None:
    from deepsift.trainer.objectives import OBJECTIVES

    sd2 = OBJECTIVES.get("sd2")
    assert [sd2.run_notes(load_recipe("sd2-clip-l14"), ranks)["description_negatives"] for ranks in (1, 8)] == [63, 511]


def test_the_sd2_recipe_resizes_and_crops_as_torchvision() -> None:
    assert load_recipe("sd2-clip-l14").input.rounding == "torchvision"
