"""Real PostgreSQL: an unknown database or role ends the command at once, in one line, with EX_CONFIG; a refused
port is an outage, which ``daemon run`` still waits out (unready, retrying) until it is stopped."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from deepsift.daemon.cli import EX_CONFIG

DAEMON = Path(sys.executable).parent / "daemon"
# Start-up of the CLI (imports) on a loaded two-core machine, plus one refused connection: well within this.
FAIL_FAST_S = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(0.2)
    pytest.fail(f"no {what} within {timeout} s")


def daemon_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPSIFT_")}
    return env | settings


def run_daemon(args: list[str], **settings: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run([str(DAEMON), *args], env=daemon_env(**settings), capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    return result, time.monotonic() - started


def unknown(postgres_server, **parts: str) -> str:
    """The test server's URL with an unknown database or role."""
    from sqlalchemy import make_url

    admin = make_url(postgres_server.create_database())
    return admin.set(**parts).render_as_string(hide_password=False)


@pytest.mark.parametrize(
    "parts, refusal",
    [({"database": "no_such_db_"}, "database"), ({"username": "no_such_role_"}, "role")],
    ids=["unknown-database", "unknown-role"],
)
@pytest.mark.parametrize("command", [["db", "current"], ["db", "upgrade"]])
def test_an_unknown_database_or_role_ends_the_command_in_one_line(postgres_server, parts, refusal, command):
    # Given a URL naming a database or role the server does not have
    ((part, prefix),) = parts.items()
    name = prefix + uuid.uuid4().hex[:8]
    url = unknown(postgres_server, **{part: name})
    # When a command starts on it
    result, elapsed = run_daemon(command, DEEPSIFT_DATABASE_URL=url, DEEPSIFT_LOG_FORMAT="console")
    # Then it ends at once with EX_CONFIG and one line that names what does not exist, no traceback
    lines = result.stderr.strip().splitlines()
    assert result.returncode == EX_CONFIG, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("daemon: database: ") and f'{refusal} "{name}" does not exist' in lines[0]
    assert elapsed < FAIL_FAST_S


def test_daemon_run_on_an_unknown_database_exits_with_one_json_error_line(postgres_server):
    url = unknown(postgres_server, database=f"no_such_db_{uuid.uuid4().hex[:8]}")
    result, elapsed = run_daemon(["run"], DEEPSIFT_DATABASE_URL=url, DEEPSIFT_HEALTH_PORT="0",
                                 DEEPSIFT_LOG_FORMAT="json", DEEPSIFT_ENGINE_STORE="/nonexistent")  # fmt: skip
    assert result.returncode == EX_CONFIG and "Traceback" not in result.stderr, result.stderr
    (error,) = [json.loads(line) for line in result.stderr.splitlines() if '"level": "error"' in line]
    assert error["event"] == "configuration_error" and "does not exist" in error["error"]
    assert elapsed < FAIL_FAST_S


def test_a_refused_port_is_still_waited_for(tmp_path):
    # Given a database URL whose port refuses connections (an outage, not a mistake)
    refused, health = free_port(), free_port()
    url = f"postgresql+psycopg://postgres@127.0.0.1:{refused}/deepsift"
    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(DAEMON), "run"],
            env=daemon_env(DEEPSIFT_DATABASE_URL=url, DEEPSIFT_HEALTH_PORT=str(health),
                           DEEPSIFT_HEALTH_HOST="127.0.0.1", DEEPSIFT_LOG_FORMAT="json"),
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        # When it has had time to fail fast, had this been permanent
        def unready_reason() -> str | None:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz/ready", timeout=2)
            except urllib.error.HTTPError as e:
                return json.loads(e.read()).get("failing", {}).get("database")
            except OSError:
                return None
            return None

        reason = wait_for(unready_reason, 30.0, "readiness naming the database")
        assert process.poll() is None, log.read_text()
        # Then it keeps waiting, unready with the reason, and retries (more than one attempt logged)
        wait_for(lambda: log.read_text().count('"dependency_unavailable"') >= 2, 30.0, "a second attempt")
        assert process.poll() is None and "Connection refused" in reason
        # And a stop request ends the wait cleanly
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "Traceback" not in log.read_text()
