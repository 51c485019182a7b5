"""What waiting cannot fix ends the command in one line with EX_CONFIG; outages stay retryable."""

from __future__ import annotations

import os

import psycopg
import pytest
from sqlalchemy.exc import ArgumentError, OperationalError

from deepsift.daemon.broker.probe import BrokerCheck, MissingTopic
from deepsift.daemon.cli import EX_CONFIG, main
from deepsift.daemon.db import is_misconfiguration, make_database, translate_outages
from deepsift.daemon.settings import CONFIG_FILE_ENV
from deepsift.daemon.stream.health import Health
from deepsift.daemon.stream.probes import Probe
from deepsift.engines.errors import ConfigurationError, RetryableError

REFUSED = 'connection failed: connection to server at "127.0.0.1", port 1 failed: Connection refused'
FATAL = 'connection failed: connection to server at "127.0.0.1", port 5432 failed: FATAL:  {}'


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("DEEPSIFT_")]:
        monkeypatch.delenv(key)


def connect_error(message: str) -> OperationalError:
    """What SQLAlchemy raises when libpq refuses a connection: psycopg's error, no SQLSTATE."""
    return OperationalError("connect", {}, psycopg.OperationalError(message))


@pytest.mark.parametrize(
    "refusal",
    [
        'database "nope" does not exist',
        'role "nobody" does not exist',
        'password authentication failed for user "deepsift"',
        'no pg_hba.conf entry for host "10.0.0.1", user "deepsift", database "deepsift", no encryption',
    ],
)
def test_refusals_no_wait_fixes_are_configuration_errors_at_start(refusal):
    error = connect_error(FATAL.format(refusal))
    assert is_misconfiguration(error)
    with (
        pytest.raises(ConfigurationError, match=r"^database: .*FATAL: " + refusal.split()[0]),
        translate_outages(at_start=True),
    ):
        raise error


@pytest.mark.parametrize(
    "message", [REFUSED, "connection timeout expired", FATAL.format("the database system is starting up")]
)
def test_outages_stay_retryable_at_start(message):
    error = connect_error(message)
    assert not is_misconfiguration(error)
    with pytest.raises(RetryableError), translate_outages(at_start=True):
        raise error


def test_a_refusal_while_running_is_retried_not_fatal():
    # A password rotated under a running daemon: verdicts wait for the fix instead of being dropped.
    with pytest.raises(RetryableError), translate_outages():
        raise connect_error(FATAL.format('password authentication failed for user "deepsift"'))


def test_sqlstate_decides_where_the_server_gives_one():
    class Refused(psycopg.OperationalError):
        sqlstate = "3D000"

    class Busy(psycopg.OperationalError):
        sqlstate = "53300"  # too_many_connections

    assert is_misconfiguration(OperationalError("x", {}, Refused("x")))
    assert not is_misconfiguration(OperationalError("x", {}, Busy("x")))
    assert is_misconfiguration(ArgumentError("Could not parse SQLAlchemy URL"))


@pytest.mark.parametrize("url", ["postgres://u@h/db", "postgresql+nosuchdriver://u@h/db", "not a url"])
def test_a_url_sqlalchemy_cannot_use_is_a_configuration_error(url):
    with pytest.raises(ConfigurationError, match=r"^database: "):
        make_database(url)


@pytest.mark.parametrize(
    "env, toml, expected",
    [
        ({"DEEPSIFT_FRAMES_PER_VIDEO": "0"}, None, "frames_per_video"),
        ({"DEEPSIFT_DATABASE_URL": "not a url"}, None, "database_url: Value error, not a SQLAlchemy URL"),
        ({}, 'databse_url = "sqlite:///typo.db"\n', "databse_url: Extra inputs are not permitted"),
        ({}, "engine_name = \n", "settings file: "),
    ],
)
def test_a_bad_setting_is_one_line_and_ex_config(monkeypatch, tmp_path, capsys, env, toml, expected):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if toml is not None:
        (tmp_path / "deepsift.toml").write_text(toml)
        monkeypatch.setenv(CONFIG_FILE_ENV, str(tmp_path / "deepsift.toml"))
    assert main(["db", "current"]) == EX_CONFIG
    err = capsys.readouterr().err
    assert err.startswith("daemon: ") and err.count("\n") == 1 and expected in err


def test_a_missing_settings_file_is_one_line_and_ex_config(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(CONFIG_FILE_ENV, str(tmp_path / "nope.toml"))
    assert main(["db", "current"]) == EX_CONFIG
    assert "nope.toml does not exist" in capsys.readouterr().err


class FakeAdmin:
    def __init__(self, topics: set[str]) -> None:
        self.topics = topics

    def describe_cluster(self) -> dict:
        return {"brokers": [{"node_id": 1}]}

    def list_topics(self) -> list[str]:
        return sorted(self.topics)


def test_a_missing_jobs_topic_makes_the_daemon_unready_with_the_reason_until_it_exists():
    # Given a broker that answers but lacks the jobs topic
    admin = FakeAdmin({"other"})
    check = BrokerCheck({"bootstrap_servers": ["127.0.0.1:9"]}, timeout_s=1.0, topic="deepsift.jobs")
    check._admin = admin  # the client is made on the first check; the broker's answers are what is tested
    health = Health()
    probe = Probe(check, health, timeout_s=1.0)
    # When the probe asks
    probe.check_once()
    # Then readiness names the topic
    failing = health.ready()[1]["failing"]
    assert "deepsift.jobs" in failing["kafka"] and "does not exist" in failing["kafka"]
    # And once someone creates it the next check clears the reason
    admin.topics.add("deepsift.jobs")
    probe.check_once()
    assert health.ready()[1]["failing"] == {}


def test_a_broker_check_without_a_topic_asks_only_for_the_cluster():
    check = BrokerCheck({"bootstrap_servers": ["127.0.0.1:9"]}, timeout_s=1.0)
    check._admin = FakeAdmin(set())
    check.check()  # no topic to look for: an empty cluster answers


def test_missing_topic_is_a_configuration_error():
    assert isinstance(MissingTopic("t"), ConfigurationError)
