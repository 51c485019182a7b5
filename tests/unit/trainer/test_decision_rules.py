"""``trainer evaluate`` states the rule its accuracy/F1/DCF are at: the paper's first (P(fake) >= 0.5 for seeds 000
and 001, "REAL is not the arg-max" for SD², the validation-chosen threshold for the few-shot detector), then the
run's validation-chosen threshold as a second, labelled set. Expected figures are counted by hand below."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deepsift.engines.recipes import load_recipe, recipe_names
from deepsift.trainer.data import ManifestDataset, ManifestRow
from deepsift.trainer.evaluate import DatasetPredictions, evaluation_report, paper_rule

SD2_CLASSES = ("real", "face_swapping", "face_reenactment", "entire_face_synthesis", "face_editing")


def binary_case(p_fake: list[float], labels: list[str], videos: list[str] | None = None):
    recipe = load_recipe("demo-tiny")
    videos = videos or [""] * len(labels)
    rows = [
        ManifestRow(path=f"{i}.png", label=label, split="test", video_id=video, frame_index=i)  # type: ignore[arg-type]
        for i, (label, video) in enumerate(zip(labels, videos, strict=True))
    ]
    p = np.asarray(p_fake)
    fake = np.asarray([label == "fake" for label in labels], dtype=int)
    predictions = DatasetPredictions(p_fake=p, class_probs=np.stack([1 - p, p], 1), targets=fake, fake=fake)
    return recipe, ManifestDataset(rows, Path("."), recipe), predictions


def test_the_seed_000_binary_figures_are_at_one_half_then_at_the_validation_threshold() -> None:
    # Given four scored images: real 0.2, fake 0.45, real 0.55, fake 0.8
    recipe, dataset, predictions = binary_case([0.2, 0.45, 0.55, 0.8], ["real", "fake", "real", "fake"])

    # When they are reported with the run's validation-chosen threshold 0.4
    report = evaluation_report(recipe, dataset, predictions, threshold=0.4)

    # Then the first figures are at 0.5, the paper's: decisions real/real/fake/fake, half right, one miss, one alarm
    image = report["image"]
    assert image["threshold"] == 0.5 and "0.5" in image["rule"] and report["decision_rule"] == image["rule"]
    assert image["accuracy"] == 0.5 and image["dcf"] == pytest.approx(0.5 * 0.5 + 0.5 * 0.5)
    assert image["confusion_matrix"] == [[1, 1], [1, 1]]
    # and the second set is at 0.4, labelled: real/fake/fake/fake → 3 of 4 right, no miss, one alarm in two reals
    tuned = report["at_validation_threshold"]
    assert tuned["threshold"] == 0.4 and "validation" in tuned["rule"] and "0.4000" in tuned["rule"]
    assert tuned["image"]["accuracy"] == 0.75 and tuned["image"]["dcf"] == pytest.approx(0.5 * 0.5)
    assert tuned["image"]["confusion_matrix"] == [[1, 1], [0, 2]]
    # and the threshold-free figures are given once, with the paper's set
    assert "roc_auc" in image and "eer" in image and "roc_auc" not in tuned["image"]


def test_without_a_validation_threshold_there_is_one_set() -> None:
    recipe, dataset, predictions = binary_case([0.2, 0.45, 0.55, 0.8], ["real", "fake", "real", "fake"])
    report = evaluation_report(recipe, dataset, predictions)
    assert report["image"]["threshold"] == 0.5 and "at_validation_threshold" not in report


def test_videos_are_decided_by_the_same_rules() -> None:
    # Given two videos of two frames: a real one (0.3, 0.6 → mean 0.45) and a fake one (0.5, 0.6 → 0.55)
    recipe, dataset, predictions = binary_case(
        [0.3, 0.6, 0.5, 0.6], ["real", "real", "fake", "fake"], ["r", "r", "f", "f"]
    )

    # When reported with a validation threshold of 0.57
    report = evaluation_report(recipe, dataset, predictions, threshold=0.57)

    # Then at 0.5 both videos are right, and at 0.57 the fake one is missed
    assert report["video"]["threshold"] == 0.5 and report["video"]["accuracy"] == 1.0
    assert report["at_validation_threshold"]["video"]["accuracy"] == 0.5


def sd2_case():
    recipe = load_recipe("tiny-sd2")
    assert recipe.task.class_names == SD2_CLASSES
    # real (REAL arg-max, P(fake) 0.6), fake FS (FS arg-max), fake FE (REAL arg-max at 0.45, P(fake) 0.55),
    # real (clearly), real (REAL arg-max at 0.35, P(fake) 0.65)
    probs = np.array([
        [0.40, 0.15, 0.15, 0.15, 0.15],
        [0.30, 0.50, 0.10, 0.05, 0.05],
        [0.45, 0.10, 0.10, 0.10, 0.25],
        [0.90, 0.02, 0.03, 0.02, 0.03],
        [0.35, 0.20, 0.15, 0.15, 0.15],
    ])  # fmt: skip
    kinds = ["real", "face_swapping", "face_editing", "real", "real"]
    rows = [
        ManifestRow(path=f"{i}.png", label="real" if k == "real" else "fake", split="test", manipulation=k)
        for i, k in enumerate(kinds)
    ]
    fake = np.asarray([k != "real" for k in kinds], dtype=int)
    targets = np.asarray([SD2_CLASSES.index(k) for k in kinds])
    predictions = DatasetPredictions(p_fake=1 - probs[:, 0], class_probs=probs, targets=targets, fake=fake)
    return recipe, ManifestDataset(rows, Path("."), recipe), predictions


def test_sd2_decides_fake_when_real_is_not_the_arg_max() -> None:
    # Given five SD² predictions where the arg-max rule and P(fake) >= 0.5 disagree on three
    recipe, dataset, predictions = sd2_case()

    # When reported with a validation threshold of 0.5
    report = evaluation_report(recipe, dataset, predictions, threshold=0.5)

    # Then the paper's figures follow the arg-max: decisions real/fake/real/real/real → 4 of 5 right, one fake missed
    image = report["image"]
    assert image["threshold"] is None and "arg-max" in image["rule"]
    assert image["accuracy"] == pytest.approx(0.8) and image["dcf"] == pytest.approx(0.5 * 0.5)
    assert image["confusion_matrix"] == [[3, 0], [1, 1]]
    # and P(fake) >= 0.5 is the second set: fake/fake/fake/real/fake → 3 of 5 right, two alarms in three reals
    tuned = report["at_validation_threshold"]["image"]
    assert tuned["accuracy"] == pytest.approx(0.6) and tuned["dcf"] == pytest.approx(0.5 * 2 / 3)
    # and the 5-class figures are the arg-max's, as before: FE taken for REAL, the rest right
    assert report["classes"]["accuracy"] == pytest.approx(0.8)


def test_the_few_shot_rule_is_its_validation_threshold_for_precision() -> None:
    # Seed 000 §2.3.2: the threshold picked on validation for a minimum precision is the paper's own rule
    recipe = load_recipe("tiny-fewshot")
    _, dataset, predictions = binary_case([0.2, 0.45, 0.55, 0.8], ["real", "fake", "real", "fake"])
    report = evaluation_report(recipe, dataset, predictions, threshold=0.7)
    assert report["image"]["threshold"] == 0.7 and "§2.3.2" in report["image"]["rule"]
    assert report["image"]["accuracy"] == 0.75 and "at_validation_threshold" not in report


EXPECTED_THRESHOLD = {"siglip_binary": 0.5, "clip_resnet_fusion": 0.5, "siglip_multitask": None, "sd2": None}


@pytest.mark.parametrize("name", recipe_names())
def test_every_shipped_recipe_has_its_papers_rule(name: str) -> None:
    recipe = load_recipe(name)
    rule = paper_rule(recipe, validation_threshold=0.37)
    expected = 0.37 if recipe.detector == "prototype_fewshot" else EXPECTED_THRESHOLD[recipe.detector]
    assert rule.threshold == expected and rule.statement
