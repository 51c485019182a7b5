"""From engine outputs to verdict facts: calibrated scores, class probabilities, labels and tamper masks."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from deepsift.daemon.outputs import RegionScores, mask_records, media_class_probs, media_label, region_scores
from deepsift.daemon.pipeline import JudgeConfig, MediaJob, PreparedMedia, Region, verdict
from deepsift.engines.aggregate import AggregationRule
from deepsift.engines.backends import EngineOutputs
from deepsift.engines.manifest import BackendSpec, Calibration, EngineManifest, OutputSpec, UncertainBand
from deepsift.engines.preprocess import InputContract
from deepsift.engines.recipes import TaskSpec

MULTICLASS = TaskSpec(kind="multiclass", class_names=("real", "synthetic", "tampered"), masks=True)
CONFIG = JudgeConfig(
    frames_per_video=4, rule=AggregationRule.parse("mean"), min_track_fraction=0.1, decoder="pyav", max_media_bytes=1
)


def manifest(task: TaskSpec = MULTICLASS, **fields: object) -> EngineManifest:
    outputs = OutputSpec(class_logits="class_logits", mask_logits="mask_logits") if task.kind == "multiclass" else None
    values: dict[str, object] = dict(
        name="mt",
        recipe="tiny-multitask",
        recipe_sha256="a" * 64,
        detector="siglip_multitask",
        task=task,
        input=InputContract(size=4),
        backend=BackendSpec(name="onnxruntime", version="1"),
        outputs=outputs or OutputSpec(),
        artifact="model.onnx",
        artifact_sha256="b" * 64,
        weights_sha256="c" * 64,
        threshold=0.5,
    )
    return EngineManifest(**(values | fields))


def test_region_scores_calibrate_the_fake_logit_and_softmax_the_class_logits() -> None:
    # Given outputs of two regions and a temperature-2 engine
    outputs = EngineOutputs(np.array([0.0, 4.0]), np.array([[0.0, 0.0, 0.0], [0.0, np.log(3.0), 0.0]]))
    scores = region_scores(outputs, manifest(calibration=Calibration(method="temperature", temperature=2.0)))
    # Then P(fake) is sigmoid(z / 2) and class probabilities are a softmax per region
    np.testing.assert_allclose(scores.p_fake, [0.5, 1 / (1 + np.exp(-2.0))])
    np.testing.assert_allclose(scores.class_probs, [[1 / 3, 1 / 3, 1 / 3], [0.2, 0.6, 0.2]])


def test_media_class_probabilities_come_from_the_decisive_track_only() -> None:
    # Given track 1 looking synthetic and track 2 looking tampered
    probs = np.array([[0.1, 0.8, 0.1], [0.1, 0.6, 0.3], [0.2, 0.1, 0.7]])
    scores = RegionScores(p_fake=np.array([0.9, 0.9, 0.8]), class_probs=probs)
    # When track 1 decided the verdict
    found = media_class_probs(scores, manifest(), [1, 1, 2], decisive_track=1, p_fake=0.9)
    # Then the media's probabilities are the mean over track 1's regions
    assert found == pytest.approx({"real": 0.1, "synthetic": 0.7, "tampered": 0.2})


def test_a_binary_engine_states_real_and_fake_from_p_fake() -> None:
    found = media_class_probs(RegionScores(np.array([0.3])), manifest(TaskSpec()), [None], 0, p_fake=0.3)
    assert found == pytest.approx({"real": 0.7, "fake": 0.3})


@pytest.mark.parametrize(
    ("p_fake", "expected"), [(0.49, "real"), (0.5, "tampered"), (0.95, "tampered")]
)  # fmt: skip
def test_a_fake_is_labelled_with_its_likeliest_manipulation(p_fake: float, expected: str) -> None:
    class_probs = {"real": 0.05, "synthetic": 0.4, "tampered": 0.55}
    assert media_label(manifest(), p_fake, class_probs) == expected


BAND = UncertainBand(low=0.3, high=0.8, target_precision=0.95)


@pytest.mark.parametrize(
    ("p_fake", "binary", "multiclass"),
    [(0.29, "real", "real"), (0.3, "uncertain", "uncertain"), (0.5, "uncertain", "uncertain"),
     (0.79, "uncertain", "uncertain"), (0.8, "fake", "tampered")],
)  # fmt: skip
def test_inside_the_uncertain_band_the_label_is_uncertain(p_fake: float, binary: str, multiclass: str) -> None:
    # Given engines whose manifests put [0.3, 0.8) around their 0.5 threshold
    class_probs = {"real": 0.05, "synthetic": 0.4, "tampered": 0.55}
    # Then inside the half-open band neither real nor fake is stated
    assert media_label(manifest(TaskSpec(), uncertain_band=BAND), p_fake, {}) == binary
    assert media_label(manifest(uncertain_band=BAND), p_fake, class_probs) == multiclass


def test_an_uncertain_verdict_stays_ok_with_its_scores() -> None:
    # Given a one-image job whose P(fake) of 0.5 falls inside the band
    prepared = PreparedMedia(
        MediaJob(job_id="j", uri="file:///x.png"), "d" * 64, None, 1, (Region(0, None),),
        np.zeros((1, 3, 4, 4), np.float32), decoder="pyav",
    )  # fmt: skip
    outputs = EngineOutputs(fake_logit=np.array([0.0]), class_logits=np.array([[0.0, 1.0, 0.0]]))
    judged = verdict(prepared, outputs, manifest(uncertain_band=BAND), CONFIG)
    # Then it is an ok verdict labelled uncertain, keeping P(fake) and the class probabilities
    assert (judged.status, judged.label) == ("ok", "uncertain")
    assert judged.p_fake == pytest.approx(0.5) and set(judged.class_probs) == {"real", "synthetic", "tampered"}


def test_masks_are_pngs_of_the_most_suspicious_regions_first() -> None:
    # Given three regions whose mask logits are 0 (p 0.5), +inf-ish and -inf-ish
    logits = np.stack([np.zeros((4, 4)), np.full((4, 4), 20.0), np.full((4, 4), -20.0)])
    scores = RegionScores(p_fake=np.array([0.2, 0.9, 0.5]), mask_logits=logits)
    # When two masks are kept
    masks = mask_records(scores, frame_indices=[10, 11, 12], track_ids=[None, 3, None], limit=2)
    # Then they belong to the regions with P(fake) 0.9 then 0.5, and decode to 8-bit probabilities
    assert [(m.frame_index, m.track_id, m.width, m.height) for m in masks] == [(11, 3, 4, 4), (12, None, 4, 4)]
    pixels = [np.asarray(Image.open(io.BytesIO(m.png))) for m in masks]
    assert [int(p.min()) for p in pixels] == [255, 0] and [int(p.max()) for p in pixels] == [255, 0]
    assert mask_records(scores, [10, 11, 12], [None, 3, None], limit=0) == ()


def test_a_multiclass_verdict_carries_classes_label_and_masks_only_when_asked() -> None:
    # Given a two-frame job scored by a multi-class mask engine
    job = MediaJob(job_id="j", uri="file:///x.mp4")
    regions = (Region(0, 0.0), Region(5, 0.5))
    prepared = PreparedMedia(job, "d" * 64, None, 2, regions, np.zeros((2, 3, 4, 4), np.float32), decoder="pyav")
    outputs = EngineOutputs(
        fake_logit=np.array([3.0, 1.0]),
        class_logits=np.array([[0.0, 2.0, 0.0], [0.0, 1.0, 0.0]]),
        mask_logits=np.zeros((2, 4, 4)),
    )
    # When judged without and with masks asked for
    plain = verdict(prepared, outputs, manifest(), CONFIG)
    with_masks = verdict(prepared, outputs, manifest(), JudgeConfig(**{**CONFIG.__dict__, "masks": True}))
    # Then both state the classes and label the fake by its likeliest manipulation; only the second has masks
    assert plain.status == "ok" and set(plain.class_probs) == {"real", "synthetic", "tampered"}
    assert plain.label == "synthetic" and plain.decoder == "pyav"
    assert plain.p_fake == pytest.approx(np.mean(1 / (1 + np.exp(-np.array([3.0, 1.0])))))
    assert plain.masks == () and [m.frame_index for m in with_masks.masks] == [0, 5]
