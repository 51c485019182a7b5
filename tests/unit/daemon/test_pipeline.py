"""The daemon's stages on real media and a real (untrained, tiny) ONNX Runtime engine."""

from __future__ import annotations

import queue
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from daemon.pipeline import JudgeConfig, MediaJob, PreparedMedia, infer, prepare, verdict
from daemon.scan import _DONE, _batches, expand_paths
from engines.aggregate import AggregationRule
from engines.backends import LoadedEngine, load_engine
from engines.faces import MtcnnFaceDetector
from engines.media import write_video

CONFIG = JudgeConfig(
    frames_per_video=8,
    rule=AggregationRule.parse("mean"),
    min_track_fraction=0.1,
    decoder="pyav",
    max_media_bytes=10**8,
)


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


def _prepared(n_frames: int) -> PreparedMedia:
    pixels = np.zeros((n_frames, 3, 4, 4), np.float32) if n_frames else None
    return PreparedMedia(MediaJob("j", "u"), None, None, pixels=pixels)


def test_batches_group_waiting_jobs_up_to_the_frame_limit():
    waiting: queue.Queue = queue.Queue()
    for n in (3, 4, 0, 5, 2):
        waiting.put(_prepared(n))
    waiting.put(_DONE)
    sizes = [[0 if p.pixels is None else len(p.pixels) for p in batch] for batch in _batches(waiting, 8)]
    assert sizes == [[3, 4, 0], [5, 2]]


def test_expand_paths_takes_media_from_folders_and_any_named_file(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("a.mp4", "sub/b.JPG", "notes.txt", ".hidden.mp4"):
        (tmp_path / name).write_bytes(b"x")
    named = tmp_path / "notes.txt"
    assert expand_paths([tmp_path, named]) == [tmp_path / "a.mp4", tmp_path / "sub" / "b.JPG", named]
