"""Both command lines take their shared options before or after the subcommand, refuse abbreviated options,
give every option a help text, and ``trainer`` reads its engine store from ``DEEPSIFT_ENGINE_STORE``."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from deepsift.daemon.cli import build_parser as daemon_parser
from deepsift.daemon.cli import main as daemon_main
from deepsift.daemon.db import alembic_config, upgrade_database
from deepsift.engines.cliargs import _subparsers
from deepsift.trainer.cli import build_parser as trainer_parser


@pytest.mark.parametrize(
    "argv",
    [
        ["--engine", "e1", "--engine-store", "/s", "--database-url", "sqlite://", "scan", "x"],
        ["scan", "x", "--engine", "e1", "--engine-store", "/s", "--database-url", "sqlite://"],
        ["--database-url", "sqlite://", "scan", "--engine", "e1", "x", "--engine-store", "/s"],
    ],
)
def test_daemon_options_before_or_after_the_subcommand(argv: list[str]) -> None:
    args = daemon_parser().parse_args(argv)
    assert (args.engine, args.engine_store, args.database_url) == ("e1", Path("/s"), "sqlite://")
    assert args.engine_version is None  # `scan --engine X` is the engine, not --engine-version


def test_an_option_before_the_subcommand_is_not_reset_by_it() -> None:
    args = daemon_parser().parse_args(["--engine", "top", "db", "upgrade"])
    assert args.engine == "top" and args.database_url is None


@pytest.mark.parametrize(
    ("parser", "argv"),
    [
        (daemon_parser, ["scan", "x", "--engine-ver", "2"]),
        (daemon_parser, ["--data", "sqlite://", "scan", "x"]),
        (daemon_parser, ["submit", "x", "--no-h"]),
        (trainer_parser, ["--engine-st", "/s", "recipes"]),
        (trainer_parser, ["demo", "--time", "5"]),
    ],
)
def test_abbreviated_options_are_refused(parser, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parser().parse_args(argv)
    assert exit_.value.code == 2  # with abbreviation on, each of these parsed as the option it begins
    assert "error:" in capsys.readouterr().err


def test_trainer_reads_the_engine_store_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEEPSIFT_ENGINE_STORE", raising=False)
    assert trainer_parser().parse_args(["recipes"]).engine_store == Path("var/engines")
    monkeypatch.setenv("DEEPSIFT_ENGINE_STORE", "/srv/engines")
    assert trainer_parser().parse_args(["recipes"]).engine_store == Path("/srv/engines")
    assert trainer_parser().parse_args(["recipes", "--engine-store", "/b"]).engine_store == Path("/b")
    assert trainer_parser().parse_args(["--engine-store", "/a", "recipes"]).engine_store == Path("/a")


@pytest.mark.parametrize("build", [daemon_parser, trainer_parser])
def test_every_option_has_help_and_shows_its_default(build) -> None:
    parser = build()
    for sub, _ in [(parser, True), *_subparsers(parser)]:
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            assert action.help, f"{sub.prog}: {action.option_strings or action.dest} has no help"
        text = sub.format_help()
        for action in sub._actions:
            if action.option_strings and isinstance(action.default, int | float | str) and action.default not in (
                argparse.SUPPRESS, False
            ) and action.default is not None:  # fmt: skip
                assert str(action.default) in text, f"{sub.prog}: {action.option_strings} hides its default"


def test_daemon_db_current_says_where_the_schema_is(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'v.db'}"
    out = io.StringIO()
    assert daemon_main(["db", "current", "--database-url", url], out) == 0
    assert "none (never migrated" in out.getvalue()
    upgrade_database(url)
    out = io.StringIO()
    assert daemon_main(["--database-url", url, "db", "current"], out) == 0
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    assert head is not None and out.getvalue().strip().startswith(f"database at revision {head}")


def test_daemon_submit_to_a_dead_broker_is_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    media = tmp_path / "a.jpg"
    media.write_bytes(b"not even an image")
    daemon = Path(sys.executable).parent / "daemon"
    env = {"PATH": "/usr/bin:/bin", "DEEPSIFT_KAFKA_REQUEST_TIMEOUT_MS": "1000", "DEEPSIFT_LOG_FORMAT": "console"}
    done = subprocess.run(
        [str(daemon), "submit", "--bootstrap-servers", f"127.0.0.1:{port}", str(media)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert f"cannot reach Kafka at 127.0.0.1:{port}" in done.stderr
