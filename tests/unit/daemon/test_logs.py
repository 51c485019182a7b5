"""Logs in JSON mode are JSON lines only: the daemon's own events, the stdlib records of the libraries it uses
(alembic, kafka-python), and the migrations, whether ``daemon db upgrade`` or the ``alembic`` CLI runs them."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import structlog

from deepsift.daemon.logs import configure_logging, json_logs

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def restore_logging():
    """Each test configures logging afresh; the next test finds the root logger as it was."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    # `daemon run`, `scan` and `submit` quiet these loggers for the whole process (an earlier test may have run one)
    libraries = {name: logging.getLogger(name).level for name in ("alembic", "kafka")}
    for name in libraries:
        logging.getLogger(name).setLevel(logging.NOTSET)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, library_level in libraries.items():
        logging.getLogger(name).setLevel(library_level)
    structlog.reset_defaults()


def json_lines(text: str) -> list[dict]:
    """Every non-empty line parsed as JSON (a plain-text line fails the test here)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_json_mode_renders_structlog_events_and_library_records_alike(capsys):
    configure_logging("INFO", "json")
    structlog.get_logger("daemon").info("job_done", job_id="j1")
    logging.getLogger("kafka.conn").warning("connect attempt to %s failed", "broker:9092")
    logging.getLogger("kafka.client").debug("below the level: not written")
    lines = json_lines(capsys.readouterr().err)
    assert json_logs()
    assert [line["event"] for line in lines] == ["job_done", "connect attempt to broker:9092 failed"]
    assert lines[0]["job_id"] == "j1" and lines[0]["level"] == "info"
    assert lines[1]["logger"] == "kafka.conn" and lines[1]["level"] == "warning" and "timestamp" in lines[1]


def test_console_mode_writes_readable_lines_and_reconfiguring_does_not_double_them(capsys):
    configure_logging("INFO", "console")
    configure_logging("INFO", "console")
    logging.getLogger("alembic.runtime.migration").info("Running upgrade 0001 -> 0002")
    err = capsys.readouterr().err
    assert not json_logs()
    assert err.count("Running upgrade 0001 -> 0002") == 1 and not err.lstrip().startswith("{")


def test_an_unknown_format_is_refused():
    with pytest.raises(ValueError, match="json, console"):
        configure_logging("INFO", "yaml")


def test_daemon_db_upgrade_logs_the_migrations_as_json(monkeypatch, capsys, tmp_path):
    from deepsift.daemon.cli import main

    monkeypatch.setenv("DEEPSIFT_DATABASE_URL", f"sqlite:///{tmp_path / 'db.sqlite'}")
    monkeypatch.setenv("DEEPSIFT_LOG_FORMAT", "json")
    assert main(["db", "upgrade"]) == 0
    lines = json_lines(capsys.readouterr().err)
    migrations = [line for line in lines if line.get("logger", "").startswith("alembic")]
    assert any(line["event"].startswith("Running upgrade") for line in migrations), lines


def test_the_alembic_cli_logs_json_when_the_log_format_is_set(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    env = {**os.environ, "DEEPSIFT_LOG_FORMAT": "json"}
    command = [sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini"), "-x", f"url={url}", "upgrade", "head"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=True)
    lines = json_lines(done.stderr)
    assert any(line["event"].startswith("Running upgrade") for line in lines), done.stderr


def test_lines_of_threads_logging_at_once_never_interleave(capsys):
    # Given structlog events and library records written by four threads at once (the daemon's stages do this)
    import threading

    configure_logging("INFO", "json")

    def events() -> None:
        for i in range(2000):
            structlog.get_logger("daemon").warning("dependency_not_answering", dependency="kafka", i=i)

    def records() -> None:
        for i in range(2000):
            logging.getLogger("kafka.conn").warning("closing connection %d", i)

    threads = [threading.Thread(target=f) for f in (events, records, events, records)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as a loaded machine does
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    # Then every line is one whole JSON object
    assert len(json_lines(capsys.readouterr().err)) == 8000
