"""A dependency-free sd_notify client: tell systemd (``Type=notify``) we are ready, alive, stopping.

systemd passes ``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace) and, with
``WatchdogSec=``, ``WATCHDOG_USEC``/``WATCHDOG_PID``. Without ``NOTIFY_SOCKET`` (a terminal, Kubernetes,
tests) every call is a no-op. A failed send is logged once and never raised: losing a heartbeat must
not take the service down — systemd's watchdog will judge the silence.
"""

from __future__ import annotations

import os
import socket

import structlog

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"

_log = structlog.get_logger("deepsift.daemon.notify")
_send_failure_logged = False


def _socket_address(value: str) -> str | bytes:
    """``@name`` is an abstract socket: on the wire its address starts with a NUL byte."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def send(message: str) -> bool:
    """Send one datagram (``KEY=VALUE`` lines) to ``$NOTIFY_SOCKET``; ``True`` when it was delivered."""
    global _send_failure_logged
    target = os.environ.get(NOTIFY_SOCKET_ENV)
    if not target:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(_socket_address(target))
            sock.sendall(message.encode())
    except (OSError, ValueError) as e:
        if not _send_failure_logged:
            _send_failure_logged = True
            _log.warning("sd_notify_failed", socket=target, message=message.split("\n", 1)[0], error=str(e))
        return False
    return True


def notify_ready() -> None:
    """Readiness: the engine is warm and the consumer has joined its group."""
    send("READY=1")


def notify_watchdog() -> None:
    """One heartbeat from the main loop; systemd restarts the service when they stop for ``WatchdogSec``."""
    send("WATCHDOG=1")


def notify_stopping() -> None:
    """Draining has started; systemd shows the unit as deactivating until we exit."""
    send("STOPPING=1")


def notify_status(text: str) -> None:
    """A one-line status shown by ``systemctl status`` (newlines would start new assignments)."""
    send("STATUS=" + " ".join(text.splitlines()))


def watchdog_interval_s() -> float | None:
    """How often to send ``WATCHDOG=1``: half the watchdog timeout, or ``None`` when no watchdog is meant for us."""
    usec = os.environ.get(WATCHDOG_USEC_ENV)
    if not usec:
        return None
    pid = os.environ.get(WATCHDOG_PID_ENV)
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2_000_000 if value > 0 else None
