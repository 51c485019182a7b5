"""The probe endpoints: exact paths, the status codes a kubelet reads, Prometheus text, and the dependency probes."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from kafka.errors import KafkaError
from structlog.testing import capture_logs

from deepsift.daemon.broker.probe import BrokerCheck
from deepsift.daemon.stream.health import Health, HealthServer
from deepsift.daemon.stream.metrics import StreamMetrics
from deepsift.daemon.stream.probes import Probe


@pytest.fixture
def served():
    health, metrics = Health(liveness_timeout_s=0.5), StreamMetrics()
    server = HealthServer(health, metrics.render, "127.0.0.1", 0).start()
    yield health, metrics, server.port
    server.close()


def _get(port: int, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def test_ready_only_when_warm_joined_healthy_and_not_draining(served):
    health, _, port = served
    assert _get(port, "/healthz/ready")[0] == 503
    health.engine_warm()
    health.joined()
    status, content_type, body = _get(port, "/healthz/ready")
    assert (status, content_type, json.loads(body)["ok"]) == (200, "application/json", True)
    # a retry loop stuck on the database makes it unready until that same loop succeeds
    health.dependency_failed("database", "connection refused")
    other = threading.Thread(target=health.dependency_ok, args=("database",))
    other.start()
    other.join()
    status, _, body = _get(port, "/healthz/ready")
    assert status == 503 and json.loads(body)["failing"] == {"database": "connection refused"}
    health.dependency_ok("database")
    assert _get(port, "/healthz/ready")[0] == 200
    health.draining()
    assert _get(port, "/healthz/ready")[0] == 503


def test_live_while_starting_and_while_the_loop_turns(served):
    health, _, port = served
    assert _get(port, "/healthz/live")[0] == 200  # starting: the loop has not run yet
    health.turned()
    assert _get(port, "/healthz/live")[0] == 200
    ok, state = health.live()
    assert ok and state["last_turn_s"] < 0.5
    time.sleep(0.6)  # the 0.5 s liveness timeout of this fixture passes without a turn
    assert _get(port, "/healthz/live")[0] == 503


def test_metrics_are_prometheus_text_and_other_paths_are_404(served):
    _, metrics, port = served
    metrics.finished("error", "not_media")
    metrics.finished("ok", None)
    status, content_type, body = _get(port, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    assert 'deepsift_jobs_total{outcome="error"} 1.0' in body
    assert 'deepsift_job_errors_total{code="not_media"} 1.0' in body
    assert _get(port, "/healthz")[0] == 404 and _get(port, "/metrics/")[0] == 404


def test_a_failed_probe_makes_unready_with_its_reason_until_a_probe_answers(served):
    health, _, port = served
    health.engine_warm()
    health.joined()
    # a probe that got no answer makes the daemon unready, whichever thread reports it
    reporter = threading.Thread(target=health.probe_failed, args=("kafka", "no answer within 5 s"))
    reporter.start()
    reporter.join()
    status, _, body = _get(port, "/healthz/ready")
    assert status == 503 and json.loads(body)["failing"] == {"kafka": "no answer within 5 s"}
    assert _get(port, "/healthz/live")[0] == 200  # a silent dependency is no reason to restart
    # and its reason wins over a retry loop's error for the same dependency
    health.dependency_failed("kafka", "commit failed")
    assert health.ready()[1]["failing"] == {"kafka": "no answer within 5 s"}
    health.dependency_ok("kafka")
    health.probe_ok("kafka")
    assert _get(port, "/healthz/ready")[0] == 200


class _Peer:
    """A dependency the test scripts: it answers, errors, or hangs until aborted (as a shut-down socket does)."""

    name = "database"

    def __init__(self) -> None:
        self.mode = "answer"
        self.aborts = 0
        self.closed = False
        self._aborted = threading.Event()

    def check(self) -> None:
        if self.mode == "error":
            raise ConnectionRefusedError("connection refused")
        if self.mode == "hang":
            self._aborted.wait(10)
            self._aborted.clear()
            raise OSError("server closed the connection unexpectedly")

    def abort(self) -> None:
        self.aborts += 1
        self._aborted.set()

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def probing():
    """A real Health and a Probe (0.3 s timeout) running on its thread, with a watchdog thread beside it."""
    health, peer, stop = Health(), _Peer(), threading.Event()
    health.engine_warm()
    health.joined()
    probe = Probe(peer, health, timeout_s=0.3, every_s=0.05)

    def watchdog() -> None:
        while not stop.wait(0.02):
            probe.watch(time.monotonic())

    threads = [threading.Thread(target=probe.run, args=(stop,)), threading.Thread(target=watchdog)]
    for thread in threads:
        thread.start()
    yield health, peer
    stop.set()
    for thread in threads:
        thread.join(timeout=5)
    assert peer.closed


def _until(condition, timeout: float = 3.0) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "condition not reached"
        time.sleep(0.01)
    return time.monotonic() - started


def test_a_probe_that_hangs_counts_as_failing_after_the_timeout_and_is_aborted(probing):
    health, peer = probing
    assert health.is_ready()
    with capture_logs() as logs:
        # When the dependency goes silent: every check hangs
        peer.mode = "hang"
        # Then readiness turns false once a check has been outstanding for the timeout, not before
        waited = _until(lambda: not health.is_ready())
        assert 0.2 <= waited < 1.0
        assert health.ready()[1]["failing"] == {"database": "no answer within 0.3 s"}
        # and the hung check was aborted, so the probe goes on checking (the abort's error does not replace the reason)
        _until(lambda: peer.aborts >= 3)
        assert health.ready()[1]["failing"] == {"database": "no answer within 0.3 s"}
        # When it answers again, readiness follows at the next check
        peer.mode = "answer"
        _until(health.is_ready)
    # and the log has one line per change, not one per check
    events = [(e["event"], e.get("reason")) for e in logs if e["event"].startswith("dependency_")]
    assert events == [("dependency_not_answering", "no answer within 0.3 s"), ("dependency_answering", None)]


def test_a_probe_that_errors_fails_at_once_with_the_error(probing):
    health, peer = probing
    peer.mode = "error"
    assert _until(lambda: not health.is_ready()) < 0.3  # no need to wait for the timeout
    assert health.ready()[1]["failing"] == {"database": "ConnectionRefusedError: connection refused"}
    assert peer.aborts == 0
    peer.mode = "answer"
    _until(health.is_ready)


def test_the_broker_check_gives_up_on_a_silent_broker_within_its_timeout_and_leaves_no_client_behind():
    # Given a "broker" that accepts connections and never answers
    with socket.create_server(("127.0.0.1", 0)) as silent:
        check = BrokerCheck({"bootstrap_servers": [f"127.0.0.1:{silent.getsockname()[1]}"]}, timeout_s=1.0)
        before = {t.ident for t in threading.enumerate()}
        # When it is checked twice
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(KafkaError):
                check.check()
            # Then each check fails within about its timeout, instead of hanging
            assert time.monotonic() - started < 3.0
        # and the half-made admin clients' IO threads are gone
        check.close()
        leftover = [t.name for t in threading.enumerate() if t.ident not in before and t.name.startswith("kafka")]
        assert leftover == []
