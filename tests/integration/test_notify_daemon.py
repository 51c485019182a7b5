"""`daemon run` speaks sd_notify as a Type=notify unit needs: READY=1, then WATCHDOG=1 pings, STOPPING=1 on drain.

The test plays systemd: it binds the notification socket and hands its path to the daemon in NOTIFY_SOCKET,
on the real broker and database of the stream tests.
"""

from __future__ import annotations

import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

READY_TIMEOUT_S = 180.0


class NotifySocket:
    """systemd's side: a bound AF_UNIX datagram socket collecting every notification in order."""

    def __init__(self, sock: socket.socket, path: Path) -> None:
        self.sock, self.path, self.messages = sock, path, []
        sock.settimeout(0.5)

    def wait_for(self, message: str, timeout: float, daemon) -> list[str]:
        """Messages received until ``message`` (a whole assignment line) arrives; fails on timeout or exit."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.messages.extend(self.sock.recv(4096).decode().splitlines())
            except TimeoutError:
                assert daemon.process.poll() is None, f"daemon exited early:\n{daemon.log()[-4000:]}"
            if message in self.messages:
                return self.messages
        pytest.fail(f"no {message} within {timeout:.0f} s; got {self.messages}\n{daemon.log()[-3000:]}")

    def pending(self) -> list[str]:
        """What is still queued on the socket (datagrams outlive their sender)."""
        self.sock.setblocking(False)
        try:
            while True:
                self.messages.extend(self.sock.recv(4096).decode().splitlines())
        except BlockingIOError:
            return self.messages
        finally:
            self.sock.settimeout(0.5)


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    # A short directory: socket paths are limited to 107 bytes, pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="sdn-") as directory:
        path = Path(directory) / "notify.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(path))
            yield NotifySocket(sock, path)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_daemon_run_notifies_ready_then_pings_the_watchdog_then_stopping(
    database_url, stream_setup, start_daemon, notify_socket
):
    # Given a daemon started as systemd starts a Type=notify unit with WatchdogSec=2s
    stream = stream_setup(database_url, partitions=1)
    daemon = start_daemon(
        {**stream.settings, "NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "2000000"}
    )  # fmt: skip
    # When it has warmed its engine and joined its group
    messages = notify_socket.wait_for("READY=1", READY_TIMEOUT_S, daemon)
    # Then READY=1 came once, and only when it was ready by its own readiness probe as well
    assert messages.count("READY=1") == 1
    assert daemon.get("/healthz/ready")[0] == 200
    # and its main loop keeps pinging the watchdog after that
    notify_socket.messages.clear()
    notify_socket.wait_for("WATCHDOG=1", 10, daemon)
    # When systemd stops it
    notify_socket.messages.clear()
    daemon.stop(signal.SIGTERM)
    # Then it exits cleanly after the drain, having said it was stopping
    assert daemon.wait(timeout=40) == 0
    assert "STOPPING=1" in notify_socket.pending()
