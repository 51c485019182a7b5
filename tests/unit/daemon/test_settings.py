from pathlib import Path

import pytest
from pydantic import ValidationError

from deepsift.daemon.settings import CONFIG_FILE_ENV, Settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in __import__("os").environ if k.startswith("DEEPSIFT_")]:
        monkeypatch.delenv(key)


def test_defaults_are_the_embedded_setup():
    settings = Settings()
    assert settings.database_url == "sqlite:///var/deepsift.db"
    assert settings.engine_store == Path("var/engines")
    assert settings.frames_per_video == 32


def test_environment_uses_the_deepsift_prefix(monkeypatch):
    monkeypatch.setenv("DEEPSIFT_DATABASE_URL", "postgresql+psycopg://u@h/db")
    monkeypatch.setenv("DEEPSIFT_FRAMES_PER_VIDEO", "8")
    monkeypatch.setenv("DATABASE_URL", "sqlite:///ignored.db")
    settings = Settings()
    assert (settings.database_url, settings.frames_per_video) == ("postgresql+psycopg://u@h/db", 8)


def test_toml_file_is_read_and_environment_wins_over_it(monkeypatch, tmp_path):
    config = tmp_path / "deepsift.toml"
    config.write_text('engine_name = "from-file"\naggregation = "topk:0.5"\nframes_per_video = 16\n')
    monkeypatch.setenv(CONFIG_FILE_ENV, str(config))
    monkeypatch.setenv("DEEPSIFT_FRAMES_PER_VIDEO", "4")
    settings = Settings()
    assert settings.engine_name == "from-file"
    assert str(settings.aggregation_rule) == "topk:0.5"
    assert settings.frames_per_video == 4


def test_missing_config_file_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv(CONFIG_FILE_ENV, str(tmp_path / "nope.toml"))
    with pytest.raises(FileNotFoundError):
        Settings()


@pytest.mark.parametrize(
    "field, value", [("aggregation", "median"), ("aggregation", "topk:2"), ("frames_per_video", 0), ("typo_field", 1)]
)
def test_invalid_values_and_unknown_keys_are_refused(field, value):
    with pytest.raises((ValidationError, KeyError, ValueError)):
        Settings(**{field: value})


def test_unknown_key_in_toml_file_is_refused(monkeypatch, tmp_path):
    config = tmp_path / "deepsift.toml"
    config.write_text('databse_url = "sqlite:///typo.db"\n')
    monkeypatch.setenv(CONFIG_FILE_ENV, str(config))
    with pytest.raises(ValidationError):
        Settings()


def test_a_misspelt_variable_is_reported_with_the_setting_it_likely_meant() -> None:
    from deepsift.daemon.settings import unknown_variables

    environ = {
        "DEEPSIFT_DATABSE_URL": "sqlite://",  # a typo
        "DEEPSIFT_DATABASE_URL": "sqlite://",  # a setting
        "DEEPSIFT_CONFIG_FILE": "x.toml",  # read beside the settings
        "DEEPSIFT_TEST_POSTGRES_URL": "postgresql://",  # the tests'
        "DEEPSIFT_NOTHING_LIKE_IT": "1",
        "HOME": "/root",
    }
    assert unknown_variables(environ) == [
        ("DEEPSIFT_DATABSE_URL", "DEEPSIFT_DATABASE_URL"),
        ("DEEPSIFT_NOTHING_LIKE_IT", None),
    ]


def test_daemon_logs_unknown_variables_at_start_up(monkeypatch, capsys, tmp_path) -> None:
    from deepsift.daemon.cli import main

    monkeypatch.setenv("DEEPSIFT_FRAMES_PER_VIDOE", "8")
    monkeypatch.setenv("DEEPSIFT_DATABASE_URL", f"sqlite:///{tmp_path / 'db.sqlite'}")
    assert main(["db", "upgrade"]) == 0
    err = capsys.readouterr().err
    assert (
        "unknown_setting_variable" in err and "DEEPSIFT_FRAMES_PER_VIDOE" in err and "DEEPSIFT_FRAMES_PER_VIDEO" in err
    )
