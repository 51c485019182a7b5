"""The facts a verdict carries (migration 0008) through the repository, ``daemon scan`` and the ``daemon run`` persist
stage, on SQLite and PostgreSQL: when the job was submitted, how long it waited, the rule's parameters, whether
masks were asked for, and the decision (``is_fake``) apart from a multi-class engine's class (``manipulation``)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image
from skimage import data
from sqlalchemy import Engine, text

from deepsift.daemon.pipeline import JudgeConfig
from deepsift.daemon.records import VerdictRecord
from deepsift.daemon.repository import VerdictRepository
from deepsift.daemon.scan import run_scan
from deepsift.daemon.settings import Settings
from deepsift.daemon.stream.metrics import StreamMetrics
from deepsift.daemon.stream.offsets import Ticket
from deepsift.daemon.stream.persist import PersistContext, persist
from deepsift.daemon.stream.sink import NoSink
from deepsift.daemon.stream.work import Envelope, Judged, Work
from deepsift.engines.backends import load_engine
from deepsift.engines.store import EngineStore

pytestmark = pytest.mark.integration

MakeVerdict = Callable[..., VerdictRecord]


class Watch:
    def dependency_failed(self, name: str, error: str) -> None:
        pass

    def dependency_ok(self, name: str) -> None:
        pass


def _columns(engine: Engine, verdict_id: int) -> tuple:
    with engine.connect() as connection:
        query = text("SELECT is_fake, manipulation, masks_requested, min_track_fraction FROM verdicts WHERE id = :id")
        return tuple(connection.execute(query, {"id": verdict_id}).one())


def test_the_new_facts_round_trip_and_the_decision_is_stored_beside_the_class(
    db_engine: Engine, make_verdict: MakeVerdict
) -> None:
    # Given a multi-class fake, a real, an uncertain and an error verdict with the new facts
    repository = VerdictRepository(db_engine)
    submitted = datetime(2026, 12, 16, 9, 30, tzinfo=UTC)
    fake = make_verdict(label="synthetic", manipulation="synthetic", submitted_at=submitted, min_track_fraction=0.25,
                        masks_requested=True)  # fmt: skip
    others = [make_verdict(label="real"), make_verdict(label="uncertain"),
              make_verdict(status="error", label=None, p_fake=None, code="corrupt_media")]  # fmt: skip
    # When they are saved and read back
    ids = [repository.save(record).id for record in (fake, *others)]
    stored = repository.get(ids[0])
    # Then every fact comes back, the submission time as the same UTC instant
    assert stored.submitted_at == submitted and stored.submitted_at.tzinfo is not None
    assert (stored.manipulation, stored.min_track_fraction, stored.masks_requested, stored.is_fake) == (
        "synthetic", 0.25, True, True
    )  # fmt: skip
    # and SQL holds the decision apart from the class: fake, real, and nothing for uncertain and error
    assert [_columns(db_engine, i)[:2] for i in ids] == [(True, "synthetic"), (False, None), (None, None), (None, None)]
    # and a plain boolean filter finds the multi-class fake that label = 'fake' misses
    with db_engine.connect() as connection:
        found = connection.execute(text("SELECT id FROM verdicts WHERE is_fake AND label <> 'fake'")).scalars().all()
    assert ids[0] in found


def test_a_manipulation_class_belongs_to_a_fake_only(make_verdict: MakeVerdict) -> None:
    with pytest.raises(ValueError, match="only a fake"):
        make_verdict(label="real", manipulation="synthetic")
    with pytest.raises(ValueError, match="only a fake"):
        make_verdict(label="tampered", manipulation="synthetic")


def _persist_context(repository: VerdictRepository) -> PersistContext:
    return PersistContext(repository, NoSink(), Watch(), StreamMetrics(), threading.Event())


def test_daemon_run_stores_the_kafka_record_time_and_the_wait(
    db_engine: Engine, make_verdict: MakeVerdict, judge_config: JudgeConfig
) -> None:
    # Given a Kafka delivery produced 2.5 s before the daemon took it, and its verdict with a shadow's
    repository = VerdictRepository(db_engine)
    produced_ms = int(time.time() * 1000) - 2500
    envelope = Envelope(Ticket("jobs", 0, 7, 0), b"k", b"{}", produced_ms, time.monotonic())
    record = make_verdict(timings_ms={"decode": 12.5, "infer": 3.25})
    shadow = make_verdict(job_id=record.job_id, engine_version=9, role="shadow")
    judged = Judged(Work(envelope, record.job_id, judge_config), record, (shadow,))
    # When the persist stage stores it
    done = persist(judged, _persist_context(repository))
    # Then the verdict and its shadow carry the record's time, and the wait and total beside the stage timings
    stored = repository.get(done.verdict_id)
    assert stored.submitted_at == datetime.fromtimestamp(produced_ms / 1000.0, UTC)
    timings = stored.timings_ms
    assert {"decode", "infer", "queue_wait", "total"} <= set(timings)
    assert 2400 <= timings["queue_wait"] <= timings["total"] < 60_000
    shadow_id = repository.find_id(record.job_id, shadow.engine)
    assert shadow_id is not None and repository.get(shadow_id).submitted_at == stored.submitted_at


@pytest.mark.parametrize("timestamp_ms", [2**63 - 1, 2**62, -1])
def test_a_record_time_no_date_can_hold_is_stored_without_one(
    db_engine: Engine, make_verdict: MakeVerdict, judge_config: JudgeConfig, timestamp_ms: int
) -> None:
    # Given a delivery whose producer set a timestamp past year 9999 (or before 1970)
    repository = VerdictRepository(db_engine)
    envelope = Envelope(Ticket("jobs", 0, 8, 0), b"k", b"{}", timestamp_ms, time.monotonic())
    record = make_verdict(timings_ms={"decode": 1.0})
    # When the persist stage stores its verdict, Then it is stored, without a submission time or waits
    done = persist(Judged(Work(envelope, record.job_id, judge_config), record), _persist_context(repository))
    stored = repository.get(done.verdict_id)
    assert stored.submitted_at is None and "queue_wait" not in stored.timings_ms


@pytest.fixture
def judge_config() -> JudgeConfig:
    return JudgeConfig(frames_per_video=4, rule=Settings().aggregation_rule, min_track_fraction=0.2,
                       decoder="pyav", max_media_bytes=1 << 30)  # fmt: skip


def test_daemon_scan_stores_the_scan_start_the_wait_the_rule_and_an_infer_timing(
    db_engine: Engine, full_frame_store: EngineStore, judge_config: JudgeConfig, tmp_path: Path
) -> None:
    # Given a folder of two photos
    folder = tmp_path / f"photos-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    Image.fromarray(data.astronaut()).save(folder / "astronaut.jpg")
    Image.fromarray(data.coffee()).save(folder / "coffee.jpg")
    repository = VerdictRepository(db_engine)
    engine = load_engine(full_frame_store.resolve("tiny-full"))
    before = datetime.now(UTC) - timedelta(seconds=1)
    # When daemon scan judges it
    results = list(run_scan([folder], engine, repository, judge_config, settings=Settings(reuse_verdicts=False)))
    # Then both verdicts count as submitted at the scan's start, with the wait, the total and the engine's time
    stored = [repository.get(r.verdict_id) for r in results if r.verdict_id is not None]
    assert len(stored) == 2 and {v.status for v in stored} == {"ok"}
    assert len({v.submitted_at for v in stored}) == 1 and before <= stored[0].submitted_at <= datetime.now(UTC)
    for verdict in stored:
        assert {"infer", "queue_wait", "total"} <= set(verdict.timings_ms)
        assert 0 <= verdict.timings_ms["queue_wait"] <= verdict.timings_ms["total"]
        # and the rule's parameters, masks not asked for, and a decision in SQL
        is_fake, manipulation, masks, fraction = _columns(db_engine, results[stored.index(verdict)].verdict_id)
        assert (is_fake is not None, manipulation, masks, fraction) == (True, None, False, 0.2)
        assert bool(is_fake) == (verdict.label == "fake")
