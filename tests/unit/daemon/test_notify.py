"""sd_notify client against a real AF_UNIX datagram socket, as systemd would bind it."""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from deepsift.daemon import notify


class NotifyListener:
    """A bound datagram socket standing in for systemd's notification socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(2.0)

    def receive(self) -> str:
        return self.sock.recv(4096).decode()

    def nothing_pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096)
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(2.0)
        return False


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in (notify.NOTIFY_SOCKET_ENV, notify.WATCHDOG_USEC_ENV, notify.WATCHDOG_PID_ENV):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(notify, "_send_failure_logged", False)


@pytest.fixture
def listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifyListener]:
    # A short directory: socket paths are limited to 107 bytes, pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="sdn-") as directory:
        path = Path(directory) / "notify.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(path))
            monkeypatch.setenv(notify.NOTIFY_SOCKET_ENV, str(path))
            yield NotifyListener(sock)


def test_ready_is_sent_to_the_socket(listener):
    notify.notify_ready()
    assert listener.receive() == "READY=1"


def test_watchdog_and_stopping_are_sent_in_order(listener):
    notify.notify_watchdog()
    notify.notify_stopping()
    assert [listener.receive(), listener.receive()] == ["WATCHDOG=1", "STOPPING=1"]


def test_status_is_one_line_even_when_the_text_has_several(listener):
    notify.notify_status("consuming uploads\nlag=3")
    assert listener.receive() == "STATUS=consuming uploads lag=3"


def test_abstract_namespace_socket_starting_with_at(monkeypatch):
    name = f"deepsift-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        monkeypatch.setenv(notify.NOTIFY_SOCKET_ENV, "@" + name)
        notify.notify_ready()
        sock.settimeout(2.0)
        assert sock.recv(4096) == b"READY=1"


def test_without_notify_socket_every_call_is_a_silent_no_op():
    with capture_logs() as logs:
        notify.notify_ready()
        notify.notify_watchdog()
        notify.notify_stopping()
        notify.notify_status("idle")
    assert notify.send("READY=1") is False
    assert logs == []


def test_a_missing_socket_never_raises_and_is_logged_once(monkeypatch, tmp_path):
    monkeypatch.setenv(notify.NOTIFY_SOCKET_ENV, str(tmp_path / "gone.sock"))
    with capture_logs() as logs:
        notify.notify_ready()
        notify.notify_watchdog()
        notify.notify_stopping()
    assert [entry["event"] for entry in logs] == ["sd_notify_failed"]


def test_send_reports_delivery(listener):
    assert notify.send("WATCHDOG=1") is True
    assert listener.receive() == "WATCHDOG=1"
    assert listener.nothing_pending()


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("20000000", None, 10.0),
        ("20000000", "self", 10.0),
        ("3000000", "self", 1.5),
        ("20000000", "other", None),
        ("0", None, None),
        ("not-a-number", None, None),
        (None, None, None),
    ],
)
def test_watchdog_interval_is_half_the_timeout_when_meant_for_us(monkeypatch, usec, pid, expected):
    if usec is not None:
        monkeypatch.setenv(notify.WATCHDOG_USEC_ENV, usec)
    if pid == "self":
        monkeypatch.setenv(notify.WATCHDOG_PID_ENV, str(os.getpid()))
    elif pid == "other":
        monkeypatch.setenv(notify.WATCHDOG_PID_ENV, str(os.getpid() + 1))
    assert notify.watchdog_interval_s() == expected
