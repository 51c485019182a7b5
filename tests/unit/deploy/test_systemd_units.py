"""The systemd units: `systemd-analyze verify` clean, timeouts consistent with the drain, hardened."""

from __future__ import annotations

import re
import shlex
import subprocess
import sysconfig
from collections.abc import Callable
from pathlib import Path

import pytest

from deepsift.daemon.settings import Settings

SYSTEMD = Path(__file__).resolve().parents[3] / "deploy" / "systemd"
UNITS = sorted(SYSTEMD.glob("*.service"))
INSTALLED_BIN = "/opt/deepsift/venv/bin/"
DAEMON_UNIT = SYSTEMD / "deepsift-daemon.service"
DB_UPGRADE_UNIT = SYSTEMD / "deepsift-db-upgrade.service"
REBUILD_UNIT = SYSTEMD / "deepsift-rebuild-engine@.service"
# Headroom between the drain deadline and SIGKILL: commit offsets, close the consumer, flush logs.
STOP_HEADROOM_S = 10
TIME_UNITS = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}


def directives(unit: Path) -> dict[str, list[str]]:
    """``Key=value`` assignments per key (systemd allows a key several times), ignoring comments."""
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if line.strip() and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def seconds(span: str) -> float:
    """A systemd time span such as ``60s``, ``5min`` or ``4h`` (plain numbers are seconds)."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span)
    assert parts, f"not a time span: {span!r}"
    return sum(float(number) * TIME_UNITS[unit or "s"] for number, unit in parts)


def unit_environment(unit: Path) -> dict[str, str]:
    pairs = (value.split("=", 1) for value in directives(unit).get("Environment", []))
    return {key: value for key, value in pairs}


def drain_deadline_s(env_keys: Callable[[str], dict[str, str]]) -> float:
    """The deadline the daemon runs with under systemd: the env file's value, else the unit's, else the default."""
    name = "DEEPSIFT_DRAIN_DEADLINE_S"
    env_file = env_keys((SYSTEMD / "deepsift.env.example").read_text())
    value = env_file.get(name) or unit_environment(DAEMON_UNIT).get(name)
    if value is None:
        return float(Settings.model_construct().drain_deadline_s)
    return float(value)


def test_every_unit_passes_systemd_analyze_verify(systemd_analyze, tmp_path):
    # Given the units, with ExecStart pointing at this venv's real console scripts instead of /opt/deepsift
    scripts = Path(sysconfig.get_path("scripts"))
    assert (scripts / "daemon").exists() and (scripts / "trainer").exists()
    copies = []
    for unit in UNITS:
        text = unit.read_text()
        exec_lines = re.findall(r"^Exec\w+=(.*)$", text, flags=re.MULTILINE)
        assert exec_lines and all(line.startswith(INSTALLED_BIN) for line in exec_lines), unit.name
        copy = tmp_path / unit.name
        copy.write_text(text.replace(INSTALLED_BIN, f"{scripts}/"))
        copies.append(copy)
    # When systemd checks them (a template is checked as an instance)
    result = subprocess.run([systemd_analyze, "verify", "--man=no", *map(str, copies)], capture_output=True, text=True)
    # Then it accepts them without a single remark about them (unknown keys are only warnings, exit 0)
    remarks = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if str(tmp_path) in line or any(unit.name.split("@")[0] in line for unit in UNITS)
    ]
    assert result.returncode == 0 and not remarks, result.stdout + result.stderr


def test_daemon_unit_is_notify_with_watchdog_and_drain_fits_the_timeouts(env_keys):
    unit = directives(DAEMON_UNIT)
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    watchdog, stop = seconds(unit["WatchdogSec"][0]), seconds(unit["TimeoutStopSec"][0])
    drain = drain_deadline_s(env_keys)
    assert 0 < drain <= watchdog, "a drain longer than WatchdogSec could be killed as a hang"
    assert drain + STOP_HEADROOM_S <= stop, "systemd would SIGKILL the daemon before its drain deadline"
    assert unit["KillMode"] == ["mixed"], "SIGTERM to the main process only, so it can drain its workers"
    assert unit["Restart"] == ["on-failure"], "a watchdog timeout must restart the daemon"


def test_drain_deadline_in_the_units_is_the_daemons_setting(run_settings):
    # The value the units configure is a real setting, and the unit's own default agrees with the daemon's.
    assert "drain_deadline_s" in type(run_settings).model_fields
    assert float(unit_environment(DAEMON_UNIT)["DEEPSIFT_DRAIN_DEADLINE_S"]) == run_settings.drain_deadline_s


def test_migrations_run_before_the_daemon_starts(has_command):
    daemon, upgrade = directives(DAEMON_UNIT), directives(DB_UPGRADE_UNIT)
    assert upgrade["Type"] == ["oneshot"]
    assert upgrade["ExecStart"] == [f"{INSTALLED_BIN}daemon db upgrade"]
    assert DB_UPGRADE_UNIT.name in " ".join(daemon["Wants"]) and DB_UPGRADE_UNIT.name in " ".join(daemon["After"])
    assert has_command("daemon", "db", "upgrade")


def test_units_run_commands_the_clis_have(has_command):
    exec_start = shlex.split(directives(REBUILD_UNIT)["ExecStart"][0])
    assert exec_start[:4] == [f"{INSTALLED_BIN}trainer", "--engine-store", "${DEEPSIFT_ENGINE_STORE}", "rebuild-engine"]
    assert shlex.split(directives(DAEMON_UNIT)["ExecStart"][0]) == [f"{INSTALLED_BIN}daemon", "run"]
    assert has_command("daemon", "run") and has_command("trainer", "rebuild-engine")


@pytest.mark.parametrize("unit", UNITS, ids=lambda unit: unit.name)
def test_units_are_hardened(unit):
    found = directives(unit)
    expected = {
        "User": ["deepsift"],
        "NoNewPrivileges": ["yes"],
        "ProtectSystem": ["strict"],
        "ProtectHome": ["yes"],
        "PrivateTmp": ["yes"],
        "CapabilityBoundingSet": [""],
    }
    assert {key: found.get(key) for key in expected} == expected
    assert found["EnvironmentFile"][0] == "/etc/deepsift/deepsift.env"
    if found.get("PrivateDevices") != ["yes"]:
        # A GPU unit: no device but the NVIDIA ones.
        assert found["DevicePolicy"] == ["closed"]
        assert all(rule.startswith("char-nvidia") for rule in found["DeviceAllow"])


def test_the_daemon_reads_the_engine_store_the_rebuild_writes():
    daemon, rebuild = unit_environment(DAEMON_UNIT), unit_environment(REBUILD_UNIT)
    store = daemon["DEEPSIFT_ENGINE_STORE"]
    assert rebuild["DEEPSIFT_ENGINE_STORE"] == store
    assert f"-{store}" in directives(DAEMON_UNIT)["ReadOnlyPaths"]
    assert store.startswith("/var/lib/" + directives(REBUILD_UNIT)["StateDirectory"][0] + "/")


def test_env_files_name_only_daemon_settings(run_settings, unknown_settings, env_keys):
    keys = env_keys((SYSTEMD / "deepsift.env.example").read_text()) | unit_environment(DAEMON_UNIT)
    deepsift_keys = [key for key in keys if key.startswith("DEEPSIFT_")]
    assert not unknown_settings(deepsift_keys), "pydantic-settings would silently ignore these"


@pytest.mark.parametrize("unit", [DAEMON_UNIT, DB_UPGRADE_UNIT], ids=lambda unit: unit.name)
def test_database_password_is_a_credential_the_file_setting_names(unit, env_keys):
    # Given a unit that opens the database, and the settings file beside it
    found, env = directives(unit), unit_environment(unit)
    credentials = dict(value.split(":", 1) for value in found["LoadCredential"])
    # Then the password is loaded as a credential, read from $CREDENTIALS_DIRECTORY, and no file holds it inline
    assert env["DEEPSIFT_DATABASE_PASSWORD_FILE"] == "%d/database-password" and "database-password" in credentials
    from sqlalchemy import make_url

    settings_file = env_keys((SYSTEMD / "deepsift.env.example").read_text())
    assert make_url(settings_file["DEEPSIFT_DATABASE_URL"]).password is None
    assert not [key for key in settings_file | env if key.endswith("_PASSWORD")]


def test_daemon_unit_does_not_restart_on_a_configuration_error():
    from deepsift.daemon.cli import EX_CONFIG

    assert directives(DAEMON_UNIT)["RestartPreventExitStatus"] == [str(EX_CONFIG)]
