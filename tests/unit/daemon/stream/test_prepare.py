"""A message becomes work: invalid jobs, jobs judged before, refused media and real media."""

from __future__ import annotations

import json
import threading
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from daemon.engine_watch import FaceDetectors
from daemon.stream.fetch import FetchPolicy
from daemon.stream.jobs import encode_job, new_job
from daemon.stream.metrics import StreamMetrics
from daemon.stream.prepare import PrepareContext, prepare_message
from engines.backends import load_engine
from engines.errors import RetryableError
from engines.media import write_video


class Repository:
    """find_id from a table of stored jobs, after ``outage`` failures."""

    def __init__(self, stored: dict[str, int] | None = None, outage: int = 0) -> None:
        self.stored, self.outage = stored or {}, outage

    def find_id(self, job_id, engine):
        if self.outage:
            self.outage -= 1
            raise RetryableError("database unavailable")
        return self.stored.get(job_id)


class Watch:
    def __init__(self) -> None:
        self.failed = 0

    def dependency_failed(self, name, error):
        self.failed += 1

    def dependency_ok(self, name):
        pass


@pytest.fixture(scope="module")
def engine(full_frame_store):
    return load_engine(full_frame_store.resolve("tiny-full"))


@pytest.fixture(scope="module")
def manifest(engine):
    return engine.manifest


@pytest.fixture
def media(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    frames = (rng.integers(0, 255, (72, 128, 3), dtype=np.uint8) for _ in range(30))
    write_video(tmp_path / "clip.mp4", frames, fps=15.0)
    return tmp_path


@pytest.fixture
def prepare(engine, media, judge_config, make_envelope):
    """prepare_message for one message value, with a media root at ``media``."""

    def run(value: bytes, repository: Repository | None = None, watch: Watch | None = None):
        context = PrepareContext(
            engines=lambda: engine,
            config=judge_config,
            policy=FetchPolicy.create(media_roots=[media]),
            repository=repository or Repository(),
            watch=watch or Watch(),
            metrics=StreamMetrics(),
            stop=threading.Event(),
            is_current=lambda ticket: True,
        )
        return prepare_message(make_envelope(7, value), context, FaceDetectors())

    return run


def _job(media, name: str, **kw) -> bytes:
    return encode_job(new_job(f"job-{name}", (media / name).as_uri(), **kw))


def test_an_image_becomes_pixels_for_the_engine(prepare, media, manifest):
    work = prepare(_job(media, "a.png", metadata={"k": 1}))
    size = manifest.input.size
    assert work.job_id == "job-a.png" and work.prepared.outcome is None
    assert work.prepared.pixels.shape == (1, 3, size, size) and work.frames == 1
    assert work.prepared.job.metadata == {"k": 1} and "fetch_media" in work.prepared.timings_ms


def test_the_job_may_ask_for_its_own_number_of_frames(prepare, media):
    assert prepare(_job(media, "clip.mp4")).frames == 8  # the daemon's setting
    work = prepare(_job(media, "clip.mp4", frames=3))
    assert work.frames == 3 and work.config.frames_per_video == 3


def test_a_job_asking_for_masks_gets_them_in_its_judge_settings_only(prepare, media):
    assert prepare(_job(media, "a.png", masks=True)).config.masks is True
    assert prepare(_job(media, "a.png")).config.masks is False


def test_an_invalid_message_is_an_error_under_an_id_from_its_position(prepare):
    work = prepare(b"{oops")
    assert work.job_id == "invalid:jobs:0:7"
    assert work.prepared.outcome[:2] == ("error", "invalid_job")
    assert work.prepared.job.uri == "kafka:jobs/0/7"
    readable = prepare(json.dumps({"schema_version": 1, "job_id": "j-9", "media_url": "gopher://x"}).encode())
    assert readable.job_id == "j-9" and readable.prepared.outcome[1] == "invalid_job"


def test_a_job_this_engine_judged_before_is_not_prepared_again(prepare, media):
    work = prepare(_job(media, "a.png"), Repository(stored={"job-a.png": 41}))
    assert work.stored_id == 41 and work.prepared is None and work.frames == 0
    invalid = prepare(b"{oops", Repository(stored={"invalid:jobs:0:7": 5}))
    assert invalid.stored_id == 5


def test_refused_and_mismatched_media_become_error_outcomes(prepare, media):
    outside = prepare(encode_job(new_job("j-out", "file:///etc/passwd")))
    assert outside.prepared.outcome[:2] == ("error", "forbidden_path")
    mismatch = prepare(_job(media, "a.png", media_type="video"))
    assert mismatch.prepared.outcome[:2] == ("error", "media_type_mismatch") and mismatch.frames == 0
    assert prepare(_job(media, "clip.mp4", media_type="video")).prepared.outcome is None


def test_the_database_is_waited_for_before_deciding_a_job_is_new(prepare, media):
    watch = Watch()
    work = prepare(_job(media, "a.png"), Repository(outage=2), watch)
    assert watch.failed == 2 and work.frames == 1


def test_a_job_is_prepared_for_the_engine_serving_when_it_starts(engine, media, judge_config, make_envelope):
    # Given a job judged by v1 before, and the engine serving switched from v1 to v2
    v2 = replace(engine, manifest=engine.manifest.model_copy(update={"version": engine.manifest.version + 1}))
    serving = [engine]
    repository = Repository()
    repository.find_id = lambda job_id, identity: 41 if identity.version == engine.manifest.version else None
    context = PrepareContext(
        engines=lambda: serving[0], config=judge_config, policy=FetchPolicy.create(media_roots=[media]),
        repository=repository, watch=Watch(), metrics=StreamMetrics(), stop=threading.Event(),
        is_current=lambda ticket: True,
    )  # fmt: skip
    value = _job(media, "a.png")
    # Then a delivery under v1 is recognised as judged, and one under v2 is prepared for v2 and keeps it
    assert prepare_message(make_envelope(7, value), context, FaceDetectors()).stored_id == 41
    serving[0] = v2
    work = prepare_message(make_envelope(8, value), context, FaceDetectors())
    assert work.stored_id is None and work.prepared.engine is v2
    # and a job that fails before inference still names the engine it was prepared for
    refused = prepare_message(
        make_envelope(9, encode_job(new_job("j-out", "file:///etc/passwd"))), context, FaceDetectors()
    )
    assert refused.prepared.engine is v2
