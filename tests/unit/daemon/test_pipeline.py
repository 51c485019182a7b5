"""The daemon's stages on real media and a real (untrained, tiny) ONNX Runtime engine."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepsift.daemon.pipeline import JudgeConfig, MediaJob, infer, prepare, verdict
from deepsift.daemon.sources.files import expand_paths
from deepsift.engines.aggregate import AggregationRule
from deepsift.engines.backends import LoadedEngine, load_engine
from deepsift.engines.budgets import MediaBudget
from deepsift.engines.faces import MtcnnFaceDetector, iou
from deepsift.engines.media import write_video

CONFIG = JudgeConfig(
    frames_per_video=8,
    rule=AggregationRule.parse("mean"),
    min_track_fraction=0.1,
    decoder="pyav",
    max_media_bytes=10**8,
)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="module")
def engine(full_frame_store) -> LoadedEngine:
    return load_engine(full_frame_store.resolve("tiny-full"))


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("media") / "clip.mp4"
    write_video(path, (rng.integers(0, 255, (72, 128, 3), dtype=np.uint8) for _ in range(40)), fps=20.0)
    return path


def _job(path: Path, **kw) -> MediaJob:
    return MediaJob(job_id=f"job-{path.name}", uri=path.as_uri(), path=path, **kw)


def test_full_frame_video_becomes_an_ok_verdict_with_one_score_per_sampled_frame(engine, clip):
    prepared = prepare(_job(clip, metadata={"uploader": "u1"}), engine.manifest, None, CONFIG)
    assert prepared.outcome is None and prepared.pixels.shape == (8, 3, 64, 64)
    (outputs,) = infer(engine, [prepared])
    record = verdict(prepared, outputs, engine.manifest, CONFIG)
    assert record.status == "ok" and record.frames_sampled == 8 and len(record.frames) == 8
    p_fake = engine.manifest.calibration.p_fake_array(outputs.fake_logit)
    assert record.p_fake == pytest.approx(float(np.mean(p_fake)))
    assert [f.p_fake for f in record.frames] == pytest.approx(list(p_fake))
    assert record.label == ("fake" if record.p_fake >= engine.manifest.threshold else "real")
    assert (record.codec, record.width, record.height, record.fps) == ("h264", 128, 72, 20.0)
    assert record.engine.version == 1 and record.engine.artifact_sha256 == engine.manifest.artifact_sha256
    assert record.metadata == {"uploader": "u1"}
    assert {"fetch", "decode", "preprocess"} <= set(record.timings_ms)


def test_missing_and_oversized_media_become_error_verdicts(engine, clip, tmp_path):
    missing = prepare(_job(tmp_path / "gone.mp4"), engine.manifest, None, CONFIG)
    too_big = prepare(_job(clip), engine.manifest, None, replace(CONFIG, max_media_bytes=100))
    for prepared, code in ((missing, "not_found"), (too_big, "too_large")):
        record = verdict(prepared, None, engine.manifest, CONFIG)
        assert (record.status, record.code, record.p_fake) == ("error", code, None)


def test_media_in_memory_is_judged_like_a_file(engine, clip):
    from_file = prepare(_job(clip), engine.manifest, None, CONFIG)
    in_memory = prepare(MediaJob(job_id="mem", uri="mem://clip", data=clip.read_bytes()), engine.manifest, None, CONFIG)
    assert in_memory.media_sha256 == from_file.media_sha256
    np.testing.assert_array_equal(in_memory.pixels, from_file.pixels)


def test_face_mode_without_a_face_abstains(demo_store, tmp_path):
    engine = load_engine(demo_store.resolve("demo"))
    flat = tmp_path / "flat.png"
    Image.fromarray(np.full((120, 160, 3), 128, np.uint8)).save(flat)
    prepared = prepare(_job(flat), engine.manifest, MtcnnFaceDetector(), CONFIG)
    record = verdict(prepared, None, engine.manifest, CONFIG)
    assert (record.status, record.code, record.label, record.p_fake) == ("abstained", "no_face", None, None)
    assert record.media_type == "image" and record.frames_sampled == 1


def test_batched_inference_returns_each_jobs_own_scores(engine, clip, tmp_path):
    image = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (50, 90, 3), dtype=np.uint8)).save(image)
    a, b = (prepare(_job(p), engine.manifest, None, CONFIG) for p in (clip, image))
    failed = prepare(_job(tmp_path / "missing.png"), engine.manifest, None, CONFIG)
    together = infer(engine, [a, failed, b])
    assert [len(s) for s in together] == [8, 1]
    np.testing.assert_allclose(together[0].fake_logit, infer(engine, [a])[0].fake_logit, atol=1e-5)
    np.testing.assert_allclose(together[1].fake_logit, infer(engine, [b])[0].fake_logit, atol=1e-5)


class _RefusesBigBatches:
    """A backend that fails on batches above a size — to see one job's failure stay with that job."""

    def __init__(self, inner, limit: int) -> None:
        self.inner, self.limit = inner, limit

    def run(self, pixels, outputs):
        if len(pixels) > self.limit:
            raise RuntimeError("out of memory")
        return self.inner.run(pixels, outputs)


def test_a_failing_job_does_not_fail_its_batch(engine, clip, tmp_path):
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(image)
    fragile = replace(engine, backend=_RefusesBigBatches(engine.backend, limit=4))
    video, still = (prepare(_job(p), engine.manifest, None, CONFIG) for p in (clip, image))
    results = infer(fragile, [video, still])
    assert isinstance(results[0], Exception) and len(results[1]) == 1
    assert verdict(video, results[0], engine.manifest, CONFIG).code == "inference_failed"
    assert verdict(still, results[1], engine.manifest, CONFIG).status == "ok"


def test_expand_paths_takes_media_from_folders_and_any_named_file(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("a.mp4", "sub/b.JPG", "notes.txt", ".hidden.mp4"):
        (tmp_path / name).write_bytes(b"x")
    named = tmp_path / "notes.txt"
    assert expand_paths([tmp_path, named]) == [tmp_path / "a.mp4", tmp_path / "sub" / "b.JPG", named]


# --- media budgets ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detector() -> MtcnnFaceDetector:
    return MtcnnFaceDetector()


@pytest.fixture(scope="module")
def wide_clip(tmp_path_factory) -> Path:
    """Ten 1280x720 frames: kept whole by the default budget, downscaled by a small one."""
    rng = np.random.default_rng(2)
    path = tmp_path_factory.mktemp("media") / "wide.mp4"
    write_video(path, (rng.integers(0, 255, (720, 1280, 3), dtype=np.uint8) for _ in range(10)), fps=25.0)
    return path


def _png(path: Path, width: int, height: int) -> Path:
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def test_a_clip_over_the_frame_budget_is_judged_from_downscaled_frames(engine, wide_clip):
    # Given a frame budget that holds the 8 sampled frames at a quarter of their side
    config = replace(CONFIG, budget=MediaBudget(frame_budget_bytes=8 * 320 * 180 * 3))
    # When the clip is prepared, scored and recorded
    prepared = prepare(_job(wide_clip), engine.manifest, None, config)
    (outputs,) = infer(engine, [prepared])
    record = verdict(prepared, outputs, engine.manifest, config)
    # Then it has an ok verdict on all 8 frames, the media's true size, and a note that frames were downscaled
    assert prepared.outcome is None and prepared.pixels.shape == (8, 3, 64, 64)
    assert (record.status, record.frames_sampled, record.width, record.height) == ("ok", 8, 1280, 720)
    assert record.decoder_note == "downscaled:0.25"
    # and the default budget keeps the frames whole, with no note
    assert prepare(_job(wide_clip), engine.manifest, None, CONFIG).decoder_note is None


@pytest.mark.parametrize(
    "budget, code",
    [
        (MediaBudget(max_frame_pixels=1280 * 720 - 1), "too_many_pixels"),
        (MediaBudget(max_video_pixels=10 * 1280 * 720 - 1), "too_many_pixels"),
        (MediaBudget(max_duration_s=0.2), "too_long"),  # the clip lasts 0.4 s
    ],
)
def test_a_video_over_a_limit_is_an_error_verdict_with_the_limits_code(engine, wide_clip, budget, code):
    config = replace(CONFIG, budget=budget)
    record = verdict(prepare(_job(wide_clip), engine.manifest, None, config), None, engine.manifest, config)
    assert (record.status, record.code, record.p_fake) == ("error", code, None)


def test_an_image_over_the_pixel_limit_is_an_error_verdict(engine, tmp_path):
    image = _png(tmp_path / "big.png", 400, 300)
    config = replace(CONFIG, budget=MediaBudget(max_image_pixels=400 * 300 - 1))
    record = verdict(prepare(_job(image), engine.manifest, None, config), None, engine.manifest, config)
    assert (record.status, record.code) == ("error", "too_many_pixels") and "400x300" in record.detail


def test_tiny_images_are_too_small_in_face_mode_and_only_under_two_pixels_in_full_frame_mode(
    engine, demo_store, detector, tmp_path
):
    face_engine = load_engine(demo_store.resolve("demo"))
    dot, thumb = _png(tmp_path / "dot.png", 1, 1), _png(tmp_path / "thumb.png", 12, 12)
    # A 1x1 image is too small to judge whatever the engine (not an MTCNN internal_error)
    for manifest, face_detector in ((engine.manifest, None), (face_engine.manifest, detector)):
        assert prepare(_job(dot), manifest, face_detector, CONFIG).outcome[:2] == ("error", "too_small")
    # A 12x12 image cannot hold a face MTCNN finds (20 px at least): too_small in face mode
    outcome = prepare(_job(thumb), face_engine.manifest, detector, CONFIG).outcome
    assert outcome[:2] == ("error", "too_small") and "20 px" in outcome[2]
    # but a full-frame engine resizes it to its input, as it resizes every frame
    assert prepare(_job(thumb), engine.manifest, None, CONFIG).pixels.shape == (1, 3, 64, 64)


def test_face_boxes_are_in_the_medias_pixels_whatever_size_frames_were_decoded_and_searched_at(
    demo_store, detector, astronaut, tmp_path
):
    # Given the astronaut at 1024x1024, and a budget that keeps it at 512x512 and searches it at 400
    face_engine = load_engine(demo_store.resolve("demo"))
    path = tmp_path / "astronaut.png"
    Image.fromarray(astronaut).resize((1024, 1024)).save(path)
    small = replace(CONFIG, budget=MediaBudget(frame_budget_bytes=512 * 512 * 3, detect_max_side=400))
    # When it is prepared with the default budget and with the small one
    whole, bounded = (prepare(_job(path), face_engine.manifest, detector, c) for c in (CONFIG, small))
    # Then both find the one face, and the boxes agree in the 1024x1024 media's pixels (a box left in the 512 px
    # frame's pixels would overlap by about 0.25; MTCNN's boxes move a few pixels between scales)
    (a,), (b,) = whole.regions, bounded.regions
    assert iou(a.box, b.box) >= 0.85 and b.box.x1 > 512
    assert whole.pixels.shape == bounded.pixels.shape and (whole.decoder_note, bounded.decoder_note) == (
        None,
        "downscaled:0.5",
    )


class _ExhaustedDetector:
    """A face detector whose allocation fails, as one that meets an unforeseen large input would."""

    def detect(self, frames):
        raise MemoryError("cannot allocate 8589934592 bytes")


def test_running_out_of_memory_is_that_jobs_error_verdict(demo_store, tmp_path):
    face_engine = load_engine(demo_store.resolve("demo"))
    prepared = prepare(_job(_png(tmp_path / "p.png", 64, 64)), face_engine.manifest, _ExhaustedDetector(), CONFIG)
    assert prepared.outcome[:2] == ("error", "out_of_memory")


def test_a_reuse_lookup_abandoned_while_stopping_is_not_the_jobs_verdict(engine, tmp_path):
    # The reuse look-up retries while the database is down; when the daemon stops meanwhile it raises Abandoned,
    # which must leave the job unjudged (its message uncommitted), not make it an internal_error verdict
    from deepsift.daemon.stream.retry import Abandoned

    path = tmp_path / "photo.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(path)

    def stopping(sha256: str) -> None:
        raise Abandoned("stopping while the database is down")

    with pytest.raises(Abandoned):
        prepare(MediaJob("j", path.as_uri(), path=path), engine.manifest, None, CONFIG, reuse=stopping)


def test_the_judge_fingerprint_follows_what_a_verdict_depends_on():
    config = CONFIG
    assert config.fingerprint == replace(config, decoder="pyav").fingerprint
    for changed in ({"frames_per_video": 9}, {"min_track_fraction": 0.5}, {"masks": True}):
        assert replace(config, **changed).fingerprint != config.fingerprint


def test_the_verdict_names_the_track_that_decided_and_how_and_a_re_upload_repeats_it(engine):
    from deepsift.daemon.pipeline.records import PreparedMedia, Region, ReusedVerdict
    from deepsift.engines.faces import FaceBox
    from deepsift.engines.media import MediaFacts

    # Given a face scored real in all 8 sampled frames of a 640x360 video, and a small stray detection scored fake
    face, stray = FaceBox(100, 100, 200, 220, 0.999), FaceBox(10, 10, 30, 34, 0.96)
    regions = (*(Region(k, k / 4, 0, 0, face) for k in range(8)), Region(3, 0.75, 1, 1, stray))
    facts = MediaFacts("video", "mp4", "h264", 640, 360, 4.0, 2.0, 8, 1000)
    prepared = PreparedMedia(MediaJob("j", "file:///j.mp4"), "a" * 64, facts, frames_sampled=8, regions=regions)
    scores = np.array([0.1] * 8 + [0.99])
    # When judged, Then the face's covered track decides, and the verdict says so
    record = verdict(prepared, scores, engine.manifest, CONFIG)
    assert (record.p_fake, record.decisive_track_id, record.decision) == (
        pytest.approx(0.1), 0, "max_of_covered_tracks"
    )  # fmt: skip
    # And with every face its own track, the fallback weighs the stray by its confidence and its size in the frame
    split = tuple(replace(r, track_id=i) for i, r in enumerate(regions))
    fallback = verdict(replace(prepared, regions=split), scores, engine.manifest, CONFIG)
    face_weight, stray_weight = 0.999, 0.96 * np.sqrt(20 * 24 / (640 * 360)) / 0.05
    expected = (8 * face_weight * 0.1 + stray_weight * 0.99) / (8 * face_weight + stray_weight)
    assert (fallback.p_fake, fallback.decision) == (pytest.approx(expected), "coverage_weighted_fallback")
    # And an exact re-upload's verdict repeats which track decided and how
    again = replace(prepared, job=MediaJob("k", "file:///k.mp4"), reused=ReusedVerdict(41, record))
    reused = verdict(again, None, engine.manifest, CONFIG)
    assert (reused.reused_from, reused.decisive_track_id, reused.decision) == (41, 0, "max_of_covered_tracks")
