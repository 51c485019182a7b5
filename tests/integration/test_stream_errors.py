"""`daemon run` when things go wrong: poison messages and bad media, and a database that goes away.

Bad input is answered (an error verdict and a dead letter), never dropped and never retried forever;
an unavailable database is waited for, and nothing is lost or skipped meanwhile.
"""

from __future__ import annotations

import base64
import contextlib
import json
import signal
import socket
import threading
from collections import Counter

import pytest
from sqlalchemy import make_url

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_poison_messages_and_bad_media_get_error_verdicts_and_dead_letters(postgres_url, stream_setup, start_daemon):
    # Given a daemon, and good jobs mixed with every kind of bad one
    stream = stream_setup(postgres_url)
    daemon = start_daemon(stream.settings)
    good = [stream.job(f"image_{i}.png", i) for i in range(4)]
    outside = stream.media.parent / "outside.png"
    outside.write_bytes((stream.media / "image_0.png").read_bytes())
    traversal_id, traversal = stream.job("../outside.png", 10)
    bad = {
        "not json": (None, b"{this is not json"),
        "schema v2": (f"{stream.group}-v2", json.dumps({"schema_version": 2, "job_id": f"{stream.group}-v2"}).encode()),
        "no job id": (None, json.dumps({"schema_version": 1, "media_url": "file:///x.png"}).encode()),
        "corrupt video": stream.job("corrupt.mp4", 11),
        "traversal": (traversal_id, traversal),
        "wrong hash": stream.job("image_1.png", 12, content_sha256="0" * 64),
        "image as video": stream.job("image_2.png", 13, media_type="video"),
    }
    expected_codes = {
        "not json": {"invalid_job"},
        "schema v2": {"invalid_job"},
        "no job id": {"invalid_job"},
        "corrupt video": {"corrupt_media", "not_media"},
        "traversal": {"forbidden_path"},
        "wrong hash": {"hash_mismatch"},
        "image as video": {"media_type_mismatch"},
    }
    values = [value for _, value in good] + [value for _, value in bad.values()]
    # When they are all produced, spread over the partitions
    placed = stream.broker.produce(stream.topic, values, partitions=stream.partitions)
    # Then messages without a readable job id are judged under an id derived from where they sit
    ids = [job_id for job_id, _ in good] + [
        job_id or f"invalid:{stream.topic}:{p}:{o}"
        for (job_id, _), (p, o) in zip(bad.values(), placed[4:], strict=True)
    ]
    stream.wait(lambda: len(stream.verdicts(ids)) == len(ids), 120, "a verdict for every message")
    verdicts = {v["job_id"]: v for v in stream.verdicts(ids)}
    assert Counter(v["job_id"] for v in stream.verdicts(ids)) == dict.fromkeys(ids, 1)
    # the good jobs are unaffected
    assert [verdicts[job_id]["status"] for job_id, _ in good] == ["ok"] * 4
    # every bad one is an error verdict with its reason
    for name, job_id in zip(bad, ids[4:], strict=True):
        assert verdicts[job_id]["status"] == "error", name
        assert verdicts[job_id]["code"] in expected_codes[name], (name, verdicts[job_id])
    # and has a dead letter carrying the original bytes, the reason and where the message was
    letters = {
        json.loads(r.value)["job_id"]: json.loads(r.value) for r in stream.broker.read(stream.dead_letter_topic, 7)
    }
    assert set(letters) == set(ids[4:])
    for (_, value), job_id, (p, o) in zip(bad.values(), ids[4:], placed[4:], strict=True):
        letter = letters[job_id]
        assert base64.b64decode(letter["value_b64"]) == value
        assert (letter["topic"], letter["partition"], letter["offset"]) == (stream.topic, p, o)
        assert letter["reason"] == verdicts[job_id]["code"] and letter["detail"]
    # the file outside the media root was never read
    assert verdicts[traversal_id]["media_uri"].endswith("/../outside.png")
    assert daemon.metric("deepsift_dead_letters_total", code="invalid_job") == 3
    stream.wait(lambda: daemon.metric("deepsift_in_flight_jobs") == 0, 30, "nothing in flight")
    daemon.stop(signal.SIGTERM)
    assert daemon.wait(timeout=40) == 0


class TcpProxy:
    """A loopback TCP forwarder the test can cut (every connection dropped, new ones refused) and restore."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        assert self._listener is not None
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            for connection in self._connections:
                self._close(connection)
            self._connections.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._connections += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._close(source)
            self._close(sink)

    @staticmethod
    def _close(connection: socket.socket) -> None:
        with contextlib.suppress(OSError):
            connection.shutdown(socket.SHUT_RDWR)
        connection.close()


def test_database_unavailable_for_a_while_waits_and_recovers_without_loss(postgres_url, stream_setup, start_daemon):
    # Given a daemon whose PostgreSQL is reached through a proxy the test controls
    direct = make_url(postgres_url)
    proxy = TcpProxy(direct.host or "127.0.0.1", direct.port or 5432)
    via_proxy = direct.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    stream = stream_setup(via_proxy)
    daemon = start_daemon(stream.settings)
    daemon.wait_ready()
    jobs = [stream.job(f"image_{i % 8}.png", i) for i in range(12)]
    ids = [job_id for job_id, _ in jobs]
    stream.broker.produce(stream.topic, [value for _, value in jobs[:6]], partitions=stream.partitions)
    db = stream_setup(postgres_url)  # the same database, read directly
    stream.wait(lambda: len(db.verdicts(ids)) == 6, 60, "the first 6 verdicts")
    # When the database becomes unreachable while 6 more jobs arrive
    proxy.cut()
    stream.broker.produce(stream.topic, [value for _, value in jobs[6:]], partitions=stream.partitions)
    # Then the daemon reports itself unready and keeps retrying, storing and committing nothing
    stream.wait(lambda: not daemon.ready(), 60, "readiness to turn false")
    assert "database" in json.loads(daemon.get("/healthz/ready")[1])["failing"]
    # (two prepare workers back off 0.1 → 0.2 → 0.4 → 0.8 → 1.6 s: ten retries keep it down for seconds)
    stream.wait(lambda: daemon.metric("deepsift_retries_total", dependency="database") >= 10, 60, "database retries")
    assert daemon.get("/healthz/live")[0] == 200
    assert len(db.verdicts(ids)) == 6
    assert sum(o or 0 for o in stream.broker.committed(stream.group, stream.topic, stream.partitions).values()) == 6
    # When the database comes back
    proxy.restore()
    # Then every job gets exactly one verdict, all offsets are committed and the daemon is ready again
    stream.wait(lambda: len(db.verdicts(ids)) >= 12, 120, "all 12 verdicts after the outage")
    assert Counter(v["job_id"] for v in db.verdicts(ids)) == dict.fromkeys(ids, 1)
    committed = lambda: stream.broker.committed(stream.group, stream.topic, stream.partitions).values()  # noqa: E731
    stream.wait(lambda: sum(o or 0 for o in committed()) == 12, 60, "12 committed offsets")
    stream.wait(daemon.ready, 60, "readiness to recover")
    daemon.stop(signal.SIGTERM)
    assert daemon.wait(timeout=40) == 0
    proxy.cut()


def test_run_refuses_to_start_on_a_database_that_is_not_migrated(tmp_path, stream_setup, start_daemon):
    # Given a database nobody migrated
    stream = stream_setup(f"sqlite:///{tmp_path / 'fresh.db'}")
    # When `daemon run` starts on it
    daemon = start_daemon(stream.settings)
    # Then it exits 1 and says what to do, instead of consuming jobs it could not store
    assert daemon.wait(timeout=120) == 1
    assert "daemon db upgrade" in daemon.log()
