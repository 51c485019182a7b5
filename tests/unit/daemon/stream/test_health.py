"""The probe endpoints: exact paths, the status codes a kubelet reads, and Prometheus text."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest

from daemon.stream.health import Health, HealthServer
from daemon.stream.metrics import StreamMetrics


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
