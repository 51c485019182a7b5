"""Liveness, readiness and metrics over HTTP: ``/healthz/live``, ``/healthz/ready``, ``/metrics``; and, when
``report_http`` is on, the read-only verdict pages under ``/verdicts`` (``daemon.report.http``).

Liveness means the main loop is turning (a hung loop gets the process restarted). Readiness means the
daemon can do its job: the engine is loaded and warm, the consumer has joined its group, no dependency
(database, broker) is failing, and it is not draining. A dependency fails when a retry loop is stuck on it
or when its probe (``daemon.stream.probes``) got an error or no answer in time; the reason is in the body.
A silent dependency leaves liveness alone: the loop still turns, restarting would not help. Kubernetes
probes and systemd units use these exact paths; the port is ``health_port`` (8080).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST

LIVENESS_TIMEOUT_S = 60.0


class Health:
    """Thread-safe state that stages and the main loop report into, and the probes read."""

    def __init__(self, liveness_timeout_s: float = LIVENESS_TIMEOUT_S) -> None:
        self._lock = threading.Lock()
        self._timeout = liveness_timeout_s
        self._last_turn: float | None = None
        self._engine_warm = False
        self._joined = False
        self._draining = False
        self._failing: dict[str, dict[int, str]] = {}  # dependency → {thread: error} of retry loops stuck on it
        self._probes_failing: dict[str, str] = {}  # dependency → why its latest probe failed

    def turned(self) -> None:
        """The main loop completed a turn."""
        with self._lock:
            self._last_turn = time.monotonic()

    def engine_warm(self) -> None:
        with self._lock:
            self._engine_warm = True

    def joined(self, value: bool = True) -> None:
        with self._lock:
            self._joined = value

    def draining(self) -> None:
        with self._lock:
            self._draining = True

    def dependency_failed(self, name: str, error: str) -> None:
        with self._lock:
            self._failing.setdefault(name, {})[threading.get_ident()] = error

    def dependency_ok(self, name: str) -> None:
        with self._lock:
            failing = self._failing.get(name)
            if failing:
                failing.pop(threading.get_ident(), None)

    def probe_failed(self, name: str, reason: str) -> None:
        """The dependency's probe got an error or no answer in time; it stays failing until a probe succeeds."""
        with self._lock:
            self._probes_failing[name] = reason

    def probe_ok(self, name: str) -> None:
        with self._lock:
            self._probes_failing.pop(name, None)

    def live(self) -> tuple[bool, dict[str, Any]]:
        """Live while starting (before the loop runs) and while the loop turned recently."""
        with self._lock:
            if self._last_turn is None:
                return True, {"status": "starting"}
            age = time.monotonic() - self._last_turn
            return age < self._timeout, {"last_turn_s": round(age, 3)}

    def ready(self) -> tuple[bool, dict[str, Any]]:
        with self._lock:
            failing = {name: next(iter(errors.values())) for name, errors in self._failing.items() if errors}
            failing.update(self._probes_failing)  # a probe's reason says more than the last retry's error
            state = {
                "engine_warm": self._engine_warm,
                "consumer_joined": self._joined,
                "draining": self._draining,
                "failing": failing,
            }
            return self._engine_warm and self._joined and not self._draining and not failing, state

    def is_ready(self) -> bool:
        return self.ready()[0]


class Pages(Protocol):
    """Extra read-only pages on the same port (``daemon.report.http.VerdictPages``)."""

    def handles(self, path: str) -> bool: ...

    def respond(self, path: str) -> Any: ...  # a daemon.report.http.Page


@dataclass
class _Routes:
    health: Health
    render_metrics: Callable[[], bytes]
    pages: Pages | None = None  # set once the services are up (they read the database)
    pages_enabled: bool = False


def _handler(routes: _Routes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._send(200, routes.render_metrics(), CONTENT_TYPE_LATEST)
            elif self.path in ("/healthz/live", "/healthz/ready"):
                ok, state = (routes.health.live if self.path.endswith("live") else routes.health.ready)()
                body = json.dumps({"ok": ok, **state}).encode()
                self._send(200 if ok else 503, body, "application/json")
            elif routes.pages_enabled and self.path.startswith("/verdicts"):
                self._page()
            else:
                self._send(404, b'{"ok": false, "error": "not found"}', "application/json")

        def _page(self) -> None:
            pages = routes.pages
            if pages is None:
                self._send(503, b'{"ok": false, "error": "starting: the verdict store is not open yet"}',
                           "application/json")  # fmt: skip
            elif not pages.handles(self.path):
                self._send(404, b'{"ok": false, "error": "not found"}', "application/json")
            else:
                page = pages.respond(self.path)
                self._send(page.status, page.body, page.content_type, page.headers)

        def _send(self, status: int, body: bytes, content_type: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


class HealthServer:
    """The probe and scrape endpoint, served from a daemon thread until ``close``."""

    def __init__(
        self, health: Health, render_metrics: Callable[[], bytes], host: str, port: int, pages: bool = False
    ) -> None:
        """``pages``: answer ``/verdicts`` with what ``serve_pages`` is given (503 until then); off: 404."""
        self._routes = _Routes(health, render_metrics, pages_enabled=pages)
        self._server = ThreadingHTTPServer((host, port), _handler(self._routes))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="health-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def serve_pages(self, pages: Pages) -> None:
        """Start answering ``/verdicts`` with ``pages``, if this server was made with ``pages=True``."""
        self._routes.pages = pages

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
