"""Passwords from files (``*_FILE`` settings, a secrets folder): set into the URL by SQLAlchemy, never shown."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError
from sqlalchemy import make_url

from deepsift.daemon.broker.client import client_config
from deepsift.daemon.cli import EX_CONFIG, main
from deepsift.daemon.settings import SECRETS_DIR_ENV, Settings, unknown_variables

PG_URL = "postgresql+psycopg://deepsift@db.example.internal:5432/deepsift"
# Characters a password concatenated into a URL would break on: the URL's own delimiters, quoting, spaces.
HOSTILE = "p@ss:w/o#rd?%25 ü&="


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("DEEPSIFT_")]:
        monkeypatch.delenv(key)


def test_database_password_file_is_set_into_the_url_whatever_its_characters(monkeypatch, tmp_path):
    # Given a password file written the usual way (a trailing newline) and a URL without a password
    secret = tmp_path / "database-password"
    secret.write_text(HOSTILE + "\n", encoding="utf-8")
    monkeypatch.setenv("DEEPSIFT_DATABASE_URL", PG_URL)
    monkeypatch.setenv("DEEPSIFT_DATABASE_PASSWORD_FILE", str(secret))
    # When the settings are read
    settings = Settings()
    url = make_url(settings.database_url)
    # Then the URL carries exactly that password, and host, user and database are untouched
    assert url.password == HOSTILE
    assert (url.username, url.host, url.port, url.database) == ("deepsift", "db.example.internal", 5432, "deepsift")
    # And neither the settings' repr nor the masked URL shows it
    assert HOSTILE not in repr(settings) and "p@ss" not in url.render_as_string(hide_password=True)


@pytest.mark.parametrize(
    "content, password", [("pw\n", "pw"), ("pw\n\n", "pw\n"), ("pw\r\n", "pw"), ("pw", "pw"), (" pw \n", " pw ")]
)
def test_only_one_trailing_newline_is_dropped(monkeypatch, tmp_path, content, password):
    secret = tmp_path / "pw"
    secret.write_bytes(content.encode())
    monkeypatch.setenv("DEEPSIFT_DATABASE_URL", PG_URL)
    monkeypatch.setenv("DEEPSIFT_DATABASE_PASSWORD_FILE", str(secret))
    assert make_url(Settings().database_url).password == password


def test_a_url_with_a_password_and_a_password_file_is_refused(monkeypatch, tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("from-file")
    monkeypatch.setenv("DEEPSIFT_DATABASE_URL", "postgresql+psycopg://deepsift:inline@db/deepsift")
    monkeypatch.setenv("DEEPSIFT_DATABASE_PASSWORD_FILE", str(secret))
    with pytest.raises(ValidationError, match="keep one"):
        Settings()


def test_kafka_sasl_password_file_reaches_the_kafka_clients(monkeypatch, tmp_path):
    # Given SASL settings whose password is a file
    secret = tmp_path / "kafka-sasl-password"
    secret.write_text("k4fka-secret\n")
    monkeypatch.setenv("DEEPSIFT_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("DEEPSIFT_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("DEEPSIFT_KAFKA_SASL_USERNAME", "deepsift")
    monkeypatch.setenv("DEEPSIFT_KAFKA_SASL_PASSWORD_FILE", str(secret))
    # When the consumer's and producer's configuration is built
    config = client_config(Settings())
    # Then it holds the file's password for the user
    assert (config["sasl_plain_username"], config["sasl_plain_password"]) == ("deepsift", "k4fka-secret")
    assert "k4fka-secret" not in repr(Settings())


def test_a_secrets_folder_supplies_the_password(monkeypatch, tmp_path):
    (tmp_path / "deepsift_database_password").write_text("from-folder\n")
    monkeypatch.setenv("DEEPSIFT_DATABASE_URL", PG_URL)
    monkeypatch.setenv(SECRETS_DIR_ENV, str(tmp_path))
    assert make_url(Settings().database_url).password == "from-folder"
    assert not unknown_variables(), "the new variables are known settings (no typo warning)"


def test_file_variables_are_known_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPSIFT_DATABASE_PASSWORD_FILE", "/run/secrets/x")
    monkeypatch.setenv("DEEPSIFT_KAFKA_SASL_PASSWORD_FILE", "/run/secrets/y")
    assert unknown_variables() == []


@pytest.mark.parametrize("variable", ["DEEPSIFT_DATABASE_PASSWORD_FILE", "DEEPSIFT_KAFKA_SASL_PASSWORD_FILE"])
def test_a_missing_password_file_stops_the_command_with_one_line(monkeypatch, tmp_path, capsys, variable):
    # Given a password file that does not exist
    missing = tmp_path / "nope"
    monkeypatch.setenv("DEEPSIFT_DATABASE_URL", PG_URL)
    monkeypatch.setenv(variable, str(missing))
    # When any command starts
    status = main(["db", "current"])
    # Then it exits with the configuration status, naming the file, in one line and before any connection
    err = capsys.readouterr().err
    assert status == EX_CONFIG
    assert err.count("\n") == 1 and str(missing) in err and "No such file" in err and "Traceback" not in err


def test_a_missing_secrets_folder_stops_the_command(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(SECRETS_DIR_ENV, str(tmp_path / "nope"))
    assert main(["db", "current"]) == EX_CONFIG
    assert SECRETS_DIR_ENV in capsys.readouterr().err
