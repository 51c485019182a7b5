"""Dependency probes for readiness: the database and the broker are asked every second, each from a thread of its own.

A silent peer (connection accepted, bytes swallowed, packets dropped) never answers with an error; a call to it
just hangs. So a probe counts as failed once its check has been outstanding for ``dependency_timeout_s``: the
watchdog reports it to readiness and aborts the check where it can, and the next check that answers makes the
dependency ready again. The main loop never waits on a probe, so liveness is untouched.

Each probe has its own client, bounded by the same timeouts: the database a connection of its own (libpq connect
timeout and keepalives from ``DbTimeouts``), the broker a small admin client whose requests and connection set-up
time out after ``dependency_timeout_s``. Asking the cluster for its description (any broker may answer) says
whether the broker answers, not whether every broker does; the topic list, whether the jobs topic exists (a
missing one is the probe's reason on ``/healthz/ready`` and in the log until it is created).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import replace
from typing import Protocol

import structlog
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from deepsift.daemon.broker.client import client_config
from deepsift.daemon.broker.probe import BrokerCheck
from deepsift.daemon.db import DbTimeouts, make_database
from deepsift.daemon.settings import Settings

log = structlog.get_logger(__name__)

PROBE_EVERY_S = 1.0  # between the end of one check and the start of the next
WATCH_EVERY_S = 0.2  # how often the watchdog looks for a check outstanding too long


class DependencyCheck(Protocol):
    """One question to a dependency. ``check`` raises unless it answered; ``abort`` is called from another thread
    to make a check that hangs return (best effort); ``close`` releases the client."""

    name: str

    def check(self) -> None: ...

    def abort(self) -> None: ...

    def close(self) -> None: ...


class ProbeReport(Protocol):
    """Where probe results go (``Health``)."""

    def probe_failed(self, name: str, reason: str) -> None: ...

    def probe_ok(self, name: str) -> None: ...


class Probe:
    """Runs one check after another on the calling thread; ``watch`` (another thread) fails a check that hangs."""

    def __init__(
        self, check: DependencyCheck, report: ProbeReport, timeout_s: float, every_s: float = PROBE_EVERY_S
    ) -> None:
        self.name = check.name
        self._check = check
        self._report = report
        self._timeout_s = timeout_s
        self._every_s = every_s
        self._lock = threading.Lock()
        self._started: float | None = None  # monotonic start of the check in progress
        self._overdue = False  # the check in progress was already reported unanswered
        self._reason: str | None = None  # why the dependency is failing; None while it answers

    def run(self, stop: threading.Event) -> None:
        """Check until ``stop``; the client is closed at the end."""
        try:
            while not stop.is_set():
                self.check_once()
                stop.wait(self._every_s)
        finally:
            self._check.close()

    def check_once(self) -> None:
        with self._lock:
            self._started, self._overdue = time.monotonic(), False
        error: str | None = None
        try:
            self._check.check()
        except Exception as e:  # any failure to answer is the dependency's, reported below
            error = _describe(e)
        with self._lock:
            overdue, self._started = self._overdue, None
            if error is None:
                self._set(None)
            elif not overdue:  # after an abort the error is the abort's; "no answer" stays the reason
                self._set(error)

    def watch(self, now: float) -> None:
        """Report a check outstanding for ``timeout_s`` or more as failed, once, and abort it."""
        with self._lock:
            if self._started is None or self._overdue or now - self._started < self._timeout_s:
                return
            self._overdue = True
            self._set(f"no answer within {self._timeout_s:g} s")
        self._check.abort()

    def _set(self, reason: str | None) -> None:
        """Readiness follows every result; the log only the changes between answering and not (lock held)."""
        if reason is None:
            self._report.probe_ok(self.name)
            if self._reason is not None:
                log.info("dependency_answering", dependency=self.name, was=self._reason)
        else:
            self._report.probe_failed(self.name, reason)
            if self._reason is None:
                log.warning("dependency_not_answering", dependency=self.name, reason=reason)
        self._reason = reason


def _describe(error: Exception) -> str:
    """One line for readiness and the log; the driver's own error where SQLAlchemy wraps one."""
    cause = error.orig if isinstance(error, DBAPIError) and error.orig is not None else error
    lines = str(cause).strip().splitlines()
    text, name = (lines[0] if lines else ""), type(cause).__name__
    return text if name in text else f"{name}: {text}"


class DatabaseCheck:
    """``SELECT 1`` on a connection kept for probing (autocommit: no transaction is held open between checks).

    A query that hangs on a silent server is aborted by shutting its socket down, which makes libpq return with
    an error; the connection is then dropped and the next check connects again, bounded by the connect timeout.
    """

    name = "database"

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._connection: Connection | None = None
        self._lock = threading.Lock()
        self._busy_fd: int | None = None  # the socket of the query in progress, for ``abort``

    def check(self) -> None:
        try:
            if self._connection is None:
                self._connection = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            with self._lock:
                self._busy_fd = _socket_fd(self._connection)
            try:
                self._connection.exec_driver_sql("SELECT 1")
            finally:
                with self._lock:
                    self._busy_fd = None
        except Exception:
            self._drop()
            raise

    def abort(self) -> None:
        with self._lock:
            if self._busy_fd is None:  # connecting (bounded by connect_timeout) or already done
                return
            try:  # a duplicate of the descriptor: shutdown acts on the connection, close only on the duplicate
                with socket.socket(fileno=os.dup(self._busy_fd)) as duplicate:
                    duplicate.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._drop()
        self._engine.dispose()

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            connection.invalidate()  # never back into the pool: its state after an abort is unknown
            connection.close()
        except Exception as e:
            log.debug("probe_connection_close_failed", error=repr(e))


def _socket_fd(connection: Connection) -> int | None:
    """The network socket under a connection (psycopg's ``fileno``), None for SQLite."""
    fileno = getattr(connection.connection.dbapi_connection, "fileno", None)
    return fileno() if callable(fileno) else None


def dependency_probes(settings: Settings, report: ProbeReport) -> list[Probe]:
    """The database and the broker probes of ``daemon run``, each with clients of its own."""
    timeout_s = settings.dependency_timeout_s
    timeouts = DbTimeouts.from_settings(settings)
    # the probe waits for a connection no longer than for an answer, so a recovered database is seen soon
    probe_timeouts = replace(timeouts, connect_s=min(timeouts.connect_s, timeout_s))
    return [
        Probe(DatabaseCheck(make_database(settings.database_url, probe_timeouts)), report, timeout_s),
        Probe(BrokerCheck(client_config(settings), timeout_s, settings.kafka_topic), report, timeout_s),
    ]


def watch_dependencies(settings: Settings, report: ProbeReport, stop: threading.Event) -> None:
    """Run the probes on threads of their own and be their watchdog until ``stop``."""
    probes = dependency_probes(settings, report)
    threads = [
        threading.Thread(target=probe.run, args=(stop,), name=f"probe-{probe.name}", daemon=True) for probe in probes
    ]
    for thread in threads:
        thread.start()
    while not stop.wait(WATCH_EVERY_S):
        now = time.monotonic()
        for probe in probes:
            probe.watch(now)
    for thread in threads:  # a probe stuck on a silent peer must not hold the exit up
        thread.join(timeout=1.0)
