"""Poison jobs on real services: the attempt record on SQLite and PostgreSQL, and `daemon run` processes killed
with SIGKILL while they hold a job, until the next one answers that job instead of dying on it too."""

from __future__ import annotations

import base64
import json
import signal
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from deepsift.daemon.attempts import RETENTION, JobAttempts, sweep_attempts
from deepsift.daemon.db import make_database
from deepsift.daemon.stream.jobs import encode_job, new_job

pytestmark = pytest.mark.integration


@pytest.fixture
def attempts(db_engine) -> JobAttempts:
    return JobAttempts(db_engine)


def _topic(request: pytest.FixtureRequest) -> str:
    """A topic name of this test's own: the shared database keeps other tests' rows."""
    return f"t-{request.node.name}-{datetime.now(UTC).timestamp()}"


def test_deliveries_are_counted_per_message(attempts, request):
    topic = _topic(request)
    assert [attempts.started(topic, 0, 5, "j-1") for _ in range(3)] == [1, 2, 3]
    assert attempts.started(topic, 0, 6, "j-1") == 1 and attempts.started(topic, 1, 5, None) == 1
    assert attempts.attempts(topic, 0, 5) == 3 and attempts.attempts(topic, 0, 7) == 0


def test_concurrent_starts_of_one_message_are_all_counted(attempts, request):
    # Given eight prepare workers (of several daemons) starting the same message at once
    topic = _topic(request)

    def start_five() -> None:
        for _ in range(5):
            attempts.started(topic, 0, 1, None)

    threads = [threading.Thread(target=start_five) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then no start is lost (the upsert is one statement, not a read and a write)
    assert attempts.attempts(topic, 0, 1) == 40


def test_the_sweep_forgets_messages_below_committed_offsets_and_rows_a_day_old(attempts, request):
    # Given messages 0..4 of partition 0 and 0..1 of partition 1 started
    topic = _topic(request)
    for partition, offsets in ((0, range(5)), (1, range(2))):
        for offset in offsets:
            attempts.started(topic, partition, offset, None)
    # When partition 0 is committed up to 3 and partition 1 not at all
    attempts.sweep({(topic, 0): 3})
    # Then only the rows of finished messages are gone
    left = {(p, o) for p in (0, 1) for o in range(5) if attempts.attempts(topic, p, o)}
    assert left == {(0, 3), (0, 4), (1, 0), (1, 1)}
    # And a day later the rest goes too, in batches, whoever owns the partitions
    attempts.sweep({}, now=datetime.now(UTC) + RETENTION + timedelta(minutes=1))
    assert not any(attempts.attempts(topic, p, o) for p, o in left)


def test_the_sweeper_thread_runs_until_the_daemon_stops(attempts, request):
    topic = _topic(request)
    attempts.started(topic, 0, 0, None)
    stop = threading.Event()
    sweeper = threading.Thread(target=sweep_attempts, args=(attempts, lambda: {(topic, 0): 1}, stop, 0.05))
    sweeper.start()
    try:
        deadline = datetime.now(UTC) + timedelta(seconds=10)
        while attempts.attempts(topic, 0, 0) and datetime.now(UTC) < deadline:
            stop.wait(0.05)
        assert attempts.attempts(topic, 0, 0) == 0
    finally:
        stop.set()
        sweeper.join(timeout=5)
    assert not sweeper.is_alive()


# --- `daemon run` killed while it holds a job ------------------------------------------------------


@pytest.fixture
def stalling_server() -> Iterator[int]:
    """A port that accepts connections and never answers: a download that hangs until the daemon is killed."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)  # never accepted: the kernel completes the handshakes, nobody reads the requests
        yield server.getsockname()[1]


@pytest.mark.slow
def test_a_job_that_kills_every_daemon_taking_it_is_answered_poison_job(
    postgres_url, stream_setup, start_daemon, stalling_server
):
    # Given a job whose media hangs its daemon, then a normal job behind it on the same partition
    max_attempts = 2
    stream = stream_setup(
        postgres_url, partitions=1, DEEPSIFT_POISON_MAX_ATTEMPTS=str(max_attempts),
        DEEPSIFT_HTTP_ALLOWED_HOSTS="127.0.0.1", DEEPSIFT_HTTP_ALLOWED_NETWORKS="127.0.0.0/8",
        DEEPSIFT_HTTP_TIMEOUT_S="600",
    )  # fmt: skip
    poison_id = f"{stream.group}-poison"
    poison = encode_job(new_job(poison_id, f"http://127.0.0.1:{stalling_server}/upload.mp4"))
    normal_id, normal = stream.job("image_0.png", 1)
    stream.broker.produce(stream.topic, [poison, normal])
    engine = make_database(postgres_url)
    attempts = JobAttempts(engine)
    try:
        # When a daemon is killed (SIGKILL, as the OOM killer does) while it holds the job, max_attempts times
        for delivery in range(1, max_attempts + 1):
            daemon = start_daemon(stream.settings)
            stream.wait(lambda d=delivery: attempts.attempts(stream.topic, 0, 0) == d, 60, f"delivery {delivery}")
            daemon.stop(signal.SIGKILL)
            daemon.wait(timeout=30)
        # Then the next daemon answers it without trying it: one poison_job error verdict and a dead letter
        survivor = start_daemon(stream.settings)
        stream.wait(lambda: stream.verdicts([poison_id]), 60, "the poison job's verdict")
        (verdict,) = stream.verdicts([poison_id])
        assert (verdict["status"], verdict["code"]) == ("error", "poison_job")
        assert verdict["detail"].startswith(f"{max_attempts} deliveries of this message started without finishing")
        # (the dead letter is acknowledged before the verdict is stored: all of them are there by now)
        letters = [json.loads(r.value) for r in stream.broker.read(stream.dead_letter_topic, 2, timeout=5)]
        assert [(d["job_id"], d["reason"], d["offset"]) for d in letters] == [(poison_id, "poison_job", 0)]
        assert base64.b64decode(letters[0]["value_b64"]) == poison
        # and its offset is committed with the normal job's, judged once; the daemon is alive and ready
        stream.wait(lambda: stream.broker.committed(stream.group, stream.topic, 1)[0] == 2, 60, "offset 2 committed")
        assert [v["status"] for v in stream.verdicts([normal_id])] == ["ok"]
        survivor.wait_ready()
        # And a job arriving after it is judged
        later_id, later = stream.job("image_1.png", 2)
        stream.broker.produce(stream.topic, [later])
        stream.wait(lambda: stream.verdicts([later_id]), 60, "the later job's verdict")
        assert [v["status"] for v in stream.verdicts([later_id])] == ["ok"]
        assert len(stream.verdicts([poison_id])) == 1 and survivor.process.poll() is None
        survivor.stop(signal.SIGTERM)
        assert survivor.wait(timeout=40) == 0
    finally:
        engine.dispose()
