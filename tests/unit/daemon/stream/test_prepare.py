"""A message becomes work: invalid and crafted messages, jobs judged before, re-used job ids, refused media,
jobs that ask for too much, poison jobs, and real media. The database is a real, migrated SQLite file."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import Engine

from deepsift.daemon.attempts import JobAttempts
from deepsift.daemon.engine_watch import FaceDetectors
from deepsift.daemon.pipeline import engine_identity
from deepsift.daemon.pipeline.fetch import FetchPolicy
from deepsift.daemon.records import VerdictRecord
from deepsift.daemon.repository import VerdictRepository
from deepsift.daemon.stream.jobs import encode_job, new_job
from deepsift.daemon.stream.metrics import StreamMetrics
from deepsift.daemon.stream.prepare import JobGuards, PrepareContext, prepare_message, prepare_worker
from deepsift.daemon.stream.retry import Abandoned
from deepsift.daemon.stream.work import STOP
from deepsift.engines.backends import LoadedEngine, load_engine
from deepsift.engines.errors import RetryableError
from deepsift.engines.manifest import sha256_file
from deepsift.engines.media import write_video

MAX_FRAMES = 16
MAX_ATTEMPTS = 3


class Flaky:
    """The real repository, unreachable for the first ``outage`` look-ups (``None``: for good); ``on_fail`` runs
    at each failed one."""

    def __init__(
        self, repository: VerdictRepository, outage: int | None, on_fail: Callable[[], None] = lambda: None
    ) -> None:
        self.repository, self.outage, self.on_fail = repository, outage, on_fail

    def find_id(self, job_id, engine):
        if self.outage is None or self.outage > 0:
            self.outage = None if self.outage is None else self.outage - 1
            self.on_fail()
            raise RetryableError("database unavailable")
        return self.repository.find_id(job_id, engine)

    def get(self, verdict_id):
        return self.repository.get(verdict_id)


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
def database(sqlite_database) -> Engine:
    return sqlite_database


@pytest.fixture
def repository(database) -> VerdictRepository:
    return VerdictRepository(database)


@pytest.fixture
def attempts(database) -> JobAttempts:
    return JobAttempts(database)


@pytest.fixture
def media(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    frames = (rng.integers(0, 255, (72, 128, 3), dtype=np.uint8) for _ in range(30))
    write_video(tmp_path / "clip.mp4", frames, fps=15.0)
    return tmp_path


@pytest.fixture
def make_context(engine, media, judge_config, repository, attempts) -> Callable[..., PrepareContext]:
    def make(**overrides) -> PrepareContext:
        fields = dict(
            engines=lambda: engine, config=judge_config, policy=FetchPolicy.create(media_roots=[media]),
            repository=repository, watch=Watch(), metrics=StreamMetrics(), stop=threading.Event(),
            is_current=lambda ticket: True, guards=JobGuards(attempts, MAX_FRAMES, MAX_ATTEMPTS),
        )  # fmt: skip
        return PrepareContext(**(fields | overrides))

    return make


@pytest.fixture
def prepare(make_context, make_envelope):
    """prepare_message for one message value (at offset 7 unless told), with a media root at ``media``."""

    def run(value: bytes, offset: int = 7, **overrides):
        return prepare_message(make_envelope(offset, value), make_context(**overrides), FaceDetectors())

    return run


@pytest.fixture
def store(repository, engine) -> Callable[..., int]:
    """Store a verdict of the serving engine for a job; its id."""

    def save(job_id: str, media_sha256: str | None, engine: LoadedEngine = engine) -> int:
        record = VerdictRecord(
            job_id, "kafka", "file:///m", "ok", engine_identity(engine.manifest), media_sha256=media_sha256
        )
        return repository.save(record).id

    return save


def _job(media, name: str, job_id: str | None = None, **kw) -> bytes:
    return encode_job(new_job(job_id or f"job-{name}", (media / name).as_uri(), **kw))


def test_an_image_becomes_pixels_for_the_engine(prepare, media, manifest):
    work = prepare(_job(media, "a.png", metadata={"k": 1}))
    size = manifest.input.size
    assert work.job_id == "job-a.png" and work.prepared.outcome is None
    assert work.prepared.pixels.shape == (1, 3, size, size) and work.frames == 1
    assert work.prepared.job.metadata == {"k": 1} and "fetch" in work.prepared.timings_ms


def test_the_job_may_ask_for_its_own_number_of_frames(prepare, media):
    assert prepare(_job(media, "clip.mp4")).frames == 8  # the daemon's setting
    work = prepare(_job(media, "clip.mp4", frames=3))
    assert work.frames == 3 and work.config.frames_per_video == 3


def test_a_job_asking_for_more_frames_than_allowed_is_refused_before_its_media_is_read(prepare, media, attempts):
    # Given the limit MAX_FRAMES; When a job asks for one frame more
    work = prepare(_job(media, "clip.mp4", frames=MAX_FRAMES + 1))
    # Then it is an error verdict that says the limit, nothing was decoded, and no delivery was counted
    status, code, detail = work.prepared.outcome
    assert (status, code) == ("error", "too_many_frames") and f"limit is {MAX_FRAMES}" in detail
    assert work.frames == 0 and work.prepared.facts is None
    assert attempts.attempts("jobs", 0, 7) == 0
    # and a job asking for exactly the limit is judged
    assert prepare(_job(media, "clip.mp4", frames=MAX_FRAMES), offset=8).prepared.outcome is None


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


def test_crafted_messages_that_break_the_json_readers_are_invalid_jobs_under_their_position(prepare):
    # Given nesting deep enough to overflow Python's JSON parser (RecursionError) beside a job id
    deep = b'{"job_id": "deep", "media_url": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    # and a job id with a lone surrogate escape, which UTF-8 (SQL, Kafka keys) cannot encode
    surrogate = b'{"schema_version": 1, "job_id": "a\\ud800b", "media_url": "file:///x/\\ud800"}'
    # When prepared; Then each is an invalid_job error verdict under its position, never an exception
    for offset, value in ((7, deep), (8, surrogate)):
        work = prepare(value, offset=offset)
        assert work.prepared.outcome[:2] == ("error", "invalid_job")
        assert (work.job_id, work.prepared.job.uri) == (f"invalid:jobs:0:{offset}", f"kafka:jobs/0/{offset}")


def test_a_job_this_engine_judged_before_is_not_prepared_again(prepare, media, store, attempts):
    # Given verdicts stored for a job (for this very media) and for an invalid message
    judged = store("job-a.png", sha256_file(media / "a.png"))
    invalid = store("invalid:jobs:0:7", None)
    # When they are delivered again; Then they are skipped, and no delivery is counted
    work = prepare(_job(media, "a.png"))
    assert work.stored_id == judged and work.prepared is None and work.frames == 0
    assert prepare(b"{oops").stored_id == invalid
    assert attempts.attempts("jobs", 0, 7) == 0


def test_a_job_id_reused_for_other_media_is_answered_once_under_a_derived_id(prepare, media, store):
    # Given job-x judged for a.png
    store("job-x", sha256_file(media / "a.png"))
    clip_sha = sha256_file(media / "clip.mp4")
    # When the producer sends job-x again, for clip.mp4 (no declared hash: the media is fetched and hashed)
    work = prepare(_job(media, "clip.mp4", job_id="job-x"))
    # Then it is an error verdict job_id_reused, with no pixels, under an id that names the new media
    derived = f"job-x#sha256:{clip_sha[:16]}"
    assert work.job_id == derived and work.prepared.job.job_id == derived and work.frames == 0
    status, code, detail = work.prepared.outcome
    assert (status, code) == ("error", "job_id_reused") and clip_sha in detail
    assert work.prepared.media_sha256 == clip_sha
    # And once that answer is stored, a re-delivery of the same message is skipped
    answered = store(derived, clip_sha)
    assert prepare(_job(media, "clip.mp4", job_id="job-x")).stored_id == answered


def test_a_declared_content_hash_decides_reuse_without_fetching(prepare, media, store):
    # Given job-y judged for a.png, and a new job-y whose declared hash differs, for a file that is gone
    store("job-y", sha256_file(media / "a.png"))
    other = "ab" * 32
    work = prepare(_job(media, "gone.mp4", job_id="job-y", content_sha256=other))
    # Then the declared hash is enough: answered job_id_reused, not skipped and not not_found
    assert work.prepared.outcome[1] == "job_id_reused" and work.job_id == "job-y#sha256:" + other[:16]


def test_a_redelivery_whose_media_cannot_be_compared_is_skipped_as_before(prepare, media, store):
    # Given job-z judged for a.png, and job-w whose earlier verdict has no media hash (it failed early)
    judged = store("job-z", sha256_file(media / "a.png"))
    early = store("job-w", None)
    # When job-z comes again and its media is gone, and job-w comes again with other media
    gone = prepare(_job(media, "gone.png", job_id="job-z"))
    other = prepare(_job(media, "clip.mp4", job_id="job-w"))
    # Then both are taken for re-deliveries of the job judged before
    assert gone.stored_id == judged and other.stored_id == early


def test_refused_and_mismatched_media_become_error_outcomes(prepare, media):
    outside = prepare(encode_job(new_job("j-out", "file:///etc/passwd")))
    assert outside.prepared.outcome[:2] == ("error", "forbidden_path")
    mismatch = prepare(_job(media, "a.png", media_type="video"))
    assert mismatch.prepared.outcome[:2] == ("error", "media_type_mismatch") and mismatch.frames == 0
    assert prepare(_job(media, "clip.mp4", media_type="video")).prepared.outcome is None


def test_the_database_is_waited_for_before_deciding_a_job_is_new(prepare, media, repository):
    watch = Watch()
    work = prepare(_job(media, "a.png"), repository=Flaky(repository, outage=2), watch=watch)
    assert watch.failed == 2 and work.frames == 1


def test_a_message_whose_deliveries_never_finished_is_answered_poison_job(prepare, media, attempts):
    # Given a job that was started MAX_ATTEMPTS times and never got a verdict (each start killed its daemon)
    value = _job(media, "a.png")
    for _ in range(MAX_ATTEMPTS):
        assert prepare(value).frames == 1
    # When it is delivered once more
    work = prepare(value)
    # Then it is not prepared again but answered poison_job, with how many deliveries died
    status, code, detail = work.prepared.outcome
    assert (status, code, work.job_id, work.frames) == ("error", "poison_job", "job-a.png", 0)
    assert detail.startswith(f"{MAX_ATTEMPTS} deliveries of this message started without finishing")
    assert attempts.attempts("jobs", 0, 7) == MAX_ATTEMPTS + 1
    # and the count is per message: the same job at another offset is judged
    assert prepare(value, offset=8).frames == 1


def test_suspects_run_one_at_a_time_and_are_counted_only_when_they_run(make_context, make_envelope, media, attempts):
    # Given two messages that were in flight when a daemon died (one the culprit, one a bystander), and a fresh one
    hold = threading.Event()

    def hanging_resolve(host, port):
        hold.wait(30)
        return []

    policy = FetchPolicy.create(media_roots=[media], allowed_hosts=["uploads.example"])
    context = make_context(policy=policy, resolve=hanging_resolve)
    culprit = make_envelope(1, encode_job(new_job("culprit", "http://uploads.example/x.mp4")))
    bystander = make_envelope(2, _job(media, "a.png", job_id="bystander"))
    for suspect in (culprit, bystander):
        attempts.started("jobs", 0, suspect.ticket.offset, None)
    results: dict[str, object] = {}

    def run(name, envelope):
        results[name] = prepare_message(envelope, context, FaceDetectors())

    first = threading.Thread(target=run, args=("culprit", culprit))
    second = threading.Thread(target=run, args=("bystander", bystander))
    try:
        # When the culprit runs and hangs, and the bystander comes next
        first.start()
        deadline = time.monotonic() + 20
        while attempts.attempts("jobs", 0, 1) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        second.start()
        # Then the bystander waits for its turn without being counted, while a fresh job is prepared beside them
        fresh = prepare_message(make_envelope(3, _job(media, "clip.mp4", job_id="fresh")), context, FaceDetectors())
        assert fresh.frames == 8
        assert second.is_alive() and attempts.attempts("jobs", 0, 2) == 1
    finally:
        hold.set()
        first.join(30)
        if second.ident is not None:
            second.join(30)
    # And once the culprit is done, the bystander runs, counted once more
    assert results["culprit"].prepared.outcome[1] == "forbidden_url"
    assert results["bystander"].frames == 1 and attempts.attempts("jobs", 0, 2) == 2


def test_an_invalid_message_that_kills_daemons_is_answered_poison_job_under_its_position(prepare):
    for _ in range(MAX_ATTEMPTS):
        assert prepare(b"\xff{").prepared.outcome[1] == "invalid_job"
    work = prepare(b"\xff{")
    assert (work.job_id, work.prepared.outcome[1]) == ("invalid:jobs:0:7", "poison_job")


def test_any_exception_in_prepare_is_that_messages_error_and_the_worker_goes_on(make_context, make_envelope, media):
    # Given a prepare stage with a bug that raises for the first message only
    calls = []
    real = make_context().engines

    def engines():
        calls.append(1)
        if len(calls) == 1:
            raise UnicodeEncodeError("utf-8", "x" * 100_000, 0, 1, "surrogates not allowed")
        return real()

    inbox, outbox = queue.Queue(), queue.Queue()
    for offset, name in ((1, "a.png"), (2, "clip.mp4")):
        inbox.put(make_envelope(offset, _job(media, name)))
    inbox.put(STOP)
    # When the worker runs
    prepare_worker(inbox, outbox, make_context(engines=engines), FaceDetectors())
    # Then the first message is an internal_error under its own job id (detail bounded), the second is prepared
    failed, prepared = outbox.get_nowait(), outbox.get_nowait()
    status, code, detail = failed.prepared.outcome
    assert (failed.job_id, status, code) == ("job-a.png", "error", "internal_error")
    assert detail.startswith("UnicodeEncodeError") and len(detail) <= 1000
    assert failed.prepared.job.uri == "kafka:jobs/0/1"
    assert prepared.job_id == "job-clip.mp4" and prepared.frames == 8


def test_a_worker_stopping_during_an_outage_leaves_the_message_uncommitted(make_context, make_envelope, repository):
    # Given the database down for good, and the daemon told to stop meanwhile
    stop = threading.Event()
    context = make_context(repository=Flaky(repository, outage=None, on_fail=stop.set), stop=stop)
    inbox, outbox = queue.Queue(), queue.Queue()
    inbox.put(make_envelope(1, b"{oops"))
    # When the worker takes the message; Then it gives up (Abandoned) instead of inventing a verdict
    with pytest.raises(Abandoned):
        prepare_worker(inbox, outbox, context, FaceDetectors())
    assert outbox.empty()


def test_a_job_is_prepared_for_the_engine_serving_when_it_starts(make_context, engine, media, store, make_envelope):
    # Given a job judged by v1 before, and the engine serving switched from v1 to v2
    v2 = replace(engine, manifest=engine.manifest.model_copy(update={"version": engine.manifest.version + 1}))
    serving = [engine]
    value = _job(media, "a.png")
    judged = store("job-a.png", sha256_file(media / "a.png"))
    context = make_context(engines=lambda: serving[0])
    # Then a delivery under v1 is recognised as judged, and one under v2 is prepared for v2 and keeps it
    assert prepare_message(make_envelope(7, value), context, FaceDetectors()).stored_id == judged
    serving[0] = v2
    work = prepare_message(make_envelope(8, value), context, FaceDetectors())
    assert work.stored_id is None and work.prepared.engine is v2
    # and a job that fails before inference still names the engine it was prepared for
    refused = prepare_message(
        make_envelope(9, encode_job(new_job("j-out", "file:///etc/passwd"))), context, FaceDetectors()
    )
    assert refused.prepared.engine is v2
