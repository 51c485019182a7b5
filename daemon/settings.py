"""Daemon settings: environment variables prefixed ``DEEPSIFT_``, an optional TOML file, then defaults.

Precedence, highest first: explicit arguments, environment (``DEEPSIFT_DATABASE_URL`` …), the TOML file
named by ``DEEPSIFT_CONFIG_FILE``, the defaults below. The defaults are the embedded set-up: SQLite and
the engine store under ``./var``. Preprocessing is *not* configured here — it comes from the engine manifest.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from deepsift.engines.aggregate import AggregationRule
from deepsift.engines.errors import ConfigurationError

CONFIG_FILE_ENV = "DEEPSIFT_CONFIG_FILE"
# A folder of secret files, one per setting, named like its variable (``deepsift_database_password``).
SECRETS_DIR_ENV = "DEEPSIFT_SECRETS_DIR"
ENV_PREFIX = "DEEPSIFT_"
# Read by other parts than the settings: the TOML file's path, the secrets folder, the systemd rebuild unit's
# arguments; DEEPSIFT_TEST_* are the test suite's.
OTHER_VARIABLES = frozenset({CONFIG_FILE_ENV, SECRETS_DIR_ENV, "DEEPSIFT_REBUILD_ARGS"})
# ``*_file`` settings: the file's content becomes the setting they name (one trailing newline dropped).
SECRET_FILES = {"database_password_file": "database_password", "kafka_sasl_password_file": "kafka_sasl_password"}
DEFAULT_DATABASE_URL = "sqlite:///var/deepsift.db"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEEPSIFT_", extra="forbid", frozen=True)

    database_url: str = Field(
        default=DEFAULT_DATABASE_URL, repr=False, description="SQLAlchemy URL of the verdict store"
    )  # not in repr: it may hold the password
    database_password: SecretStr | None = Field(
        default=None, description="put into database_url's password (the URL then holds none)"
    )
    database_password_file: Path | None = Field(
        default=None, description="file holding database_password (a mounted Secret, a systemd credential)"
    )
    engine_store: Path = Field(default=Path("var/engines"), description="root of the versioned engine store")
    engine_name: str = Field(default="demo", description="engine to serve; its 'current' version is loaded")
    engine_version: int | None = Field(default=None, description="pin a version instead of following 'current'")
    engine_poll_s: float = Field(
        default=5.0, ge=0.0, description="how often 'current' is checked for a promoted engine; 0 = never, or pinned"
    )
    shadow_engines: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="engines that score every job beside the serving one (NAME or NAME@VERSION): shadow verdicts",
    )
    frames_per_video: int = Field(default=32, ge=1, le=1024, description="evenly spaced frames sampled per video")
    aggregation: str = Field(default="mean", description="frame→video rule: mean, max, topk[:fraction], quantile[:q]")
    min_track_fraction: float = Field(
        default=0.1, ge=0.0, le=1.0, description="tracks seen in fewer frames can't decide"
    )
    decoder: Literal["auto", "pyav", "dali"] = Field(
        default="auto", description="media decoder; auto = DALI when device is CUDA and DALI is installed, else PyAV"
    )
    dali_timeout_s: float = Field(default=30.0, gt=0, description="one video's DALI decode; then PyAV decodes it")
    dali_max_duration_s: float = Field(default=1800.0, gt=0, description="longer videos go to PyAV")
    device: str = Field(default="cpu", description="torch device: face detection, GPU preprocessing, torch engines")
    masks: bool = Field(default=False, description="store tamper masks where the engine makes them (scan; jobs ask)")
    reuse_verdicts: bool = Field(
        default=True, description="answer an exact re-upload (same sha256, engine version) from its earlier verdict"
    )
    reuse_max_age_s: float | None = Field(default=None, gt=0, description="oldest verdict a re-upload may reuse")
    perceptual_hashes: bool = Field(default=True, description="store a pHash per judged image or sampled frame")
    near_duplicates: bool = Field(default=True, description="link verdicts of perceptually similar earlier media")
    near_duplicate_max_distance: int = Field(
        default=7, ge=0, le=15, description="Hamming distance of a match (of 64); 15 keeps a look-up in 22k parameters"
    )
    near_duplicate_min_fraction: float = Field(
        default=0.5, gt=0.0, le=1.0, description="share of a video's looked-up frames that must match"
    )
    content_credentials: bool = Field(default=True, description="read and store C2PA Content Credentials")
    content_credentials_trust_anchors: Path | None = Field(
        default=None, description="PEM bundle of the C2PA roots a signer must chain to for 'valid' (e.g. the C2PA list)"
    )
    inference_threads: int = Field(default=0, ge=0, description="engine threads; 0 = runtime default")
    prefetch: int = Field(default=2, ge=1, le=64, description="media decoded ahead of inference")
    max_media_bytes: int = Field(default=2 << 30, gt=0, description="larger media become error verdicts")
    # --- media budgets: checked from the header/probe before any large allocation (engines.budgets) ---
    max_image_pixels: int = Field(
        default=100_000_000, gt=0, description="larger still images are refused (too_many_pixels); 8K photos pass"
    )
    max_frame_pixels: int = Field(
        default=36_000_000, gt=0, description="videos with larger frames are refused (too_many_pixels); 8K passes"
    )
    max_video_pixels: int = Field(
        default=1_000_000_000_000, gt=0, description="frame count × frame pixels a video may hold (too_many_pixels)"
    )
    max_duration_s: float = Field(default=7200.0, gt=0, description="longer videos are refused (too_long)")
    max_frames_per_job: int = Field(
        default=128, ge=1, le=1024, description="frames a job may ask for (options.frames); more: too_many_frames"
    )
    job_frame_budget_mb: int = Field(
        default=1024, ge=16, description="decoded frames of one job; larger frames are decoded downscaled to fit"
    )
    detect_max_side: int = Field(
        default=640, ge=160, description="face detection runs on a copy whose long side is at most this"
    )
    # --- poison jobs and dependency timeouts (`daemon run`) ---
    poison_max_attempts: int = Field(
        default=3, ge=1, description="deliveries a job may start without finishing before it is answered poison_job"
    )
    db_connect_timeout_s: float = Field(default=5.0, gt=0, description="database connect timeout")
    db_statement_timeout_s: float = Field(default=30.0, gt=0, description="database statement timeout")
    dependency_timeout_s: float = Field(
        default=5.0, gt=0, description="a database or broker probe unanswered this long makes the daemon unready"
    )
    kafka_request_timeout_ms: int = Field(
        default=15_000,
        ge=1000,
        le=110_000,
        description="one broker request, then retried (producer: below its delivery timeout)",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "console"] = Field(default="auto", description="auto = JSON unless a terminal")

    # --- the stream daemon (`daemon run`) and its producer (`daemon submit`) ---
    kafka_bootstrap_servers: str = Field(default="localhost:9092", description="host:port[,host:port…]")
    kafka_topic: str = Field(default="deepsift.jobs", description="topic the upload jobs arrive on")
    kafka_group_id: str = Field(default="deepsift", description="consumer group shared by all replicas")
    kafka_dead_letter_topic: str = Field(
        default="deepsift.jobs.dead-letter", description="invalid jobs and media errors, with the original message"
    )
    kafka_verdict_topic: str | None = Field(default=None, description="result events after each SQL commit; None = off")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_sasl_password_file: Path | None = Field(default=None, description="file holding kafka_sasl_password")
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_session_timeout_ms: int = Field(default=45_000, ge=1000, description="group membership lease")
    kafka_heartbeat_interval_ms: int = Field(default=3_000, ge=100, description="below a third of the session timeout")
    media_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="folders file:// media may come from (symlinks resolved); empty = none"
    )
    http_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="host names http(s):// media may come from; empty = none"
    )
    http_allowed_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="private/loopback networks (CIDR) http(s) media may still come from; empty = public only",
    )
    http_max_bytes: int = Field(default=512 << 20, gt=0, description="download cap, enforced while streaming")
    http_timeout_s: float = Field(default=30.0, gt=0, description="per download, connect to last byte")
    batch_max_frames: int = Field(default=64, ge=1, description="engine micro-batch: frames across jobs")
    batch_max_wait_ms: int = Field(default=20, ge=0, description="how long a part-full micro-batch waits for more")
    max_in_flight: int = Field(default=32, ge=1, description="jobs taken from Kafka but not committed; then pause")
    prepare_workers: int = Field(default=2, ge=1, le=64, description="threads fetching and decoding media")
    drain_deadline_s: float = Field(default=30.0, gt=0, description="SIGTERM: finish in-flight work within this")
    stall_timeout_s: float = Field(
        default=300.0, gt=0, description="jobs in flight but none finished for this long = hung: stop watchdog pings"
    )
    health_host: str = Field(default="0.0.0.0", description="address of /healthz/live, /healthz/ready and /metrics")
    health_port: int = Field(default=8080, ge=0, le=65535, description="0 = any free port (tests)")
    report_http: bool = Field(
        default=False,
        description="serve read-only verdict pages at /verdicts on the health port; they show uploaded media",
    )

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_files(cls, data: Any) -> Any:
        """``*_file`` settings read into the secret they hold; the database password set into the URL."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for file_field, secret_field in SECRET_FILES.items():
            path = data.get(file_field)
            if path in (None, ""):
                continue
            if data.get(secret_field) not in (None, ""):
                raise ValueError(f"{secret_field} and {file_field} are both set: keep one")
            data[secret_field] = read_secret_file(Path(path), file_field)
        password = data.get("database_password")
        if password is not None:
            secret = password.get_secret_value() if isinstance(password, SecretStr) else str(password)
            data["database_url"] = url_with_password(str(data.get("database_url", DEFAULT_DATABASE_URL)), secret)
        return data

    @field_validator("database_url")
    @classmethod
    def _parsable_url(cls, value: str) -> str:
        from sqlalchemy import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(value)
        except ArgumentError as e:
            raise ValueError(f"not a SQLAlchemy URL (dialect+driver://user@host:port/database): {e}") from None
        return value

    @field_validator("aggregation")
    @classmethod
    def _known_rule(cls, value: str) -> str:
        AggregationRule.parse(value)
        return value

    @field_validator("media_roots", "http_allowed_hosts", "http_allowed_networks", "shadow_engines", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        """Environment variables may hold a JSON list or comma-separated items."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [item.strip() for item in text.split(",") if item.strip()]
        return value

    @field_validator("shadow_engines")
    @classmethod
    def _shadow_specs(cls, value: list[str]) -> list[str]:
        for spec in value:
            engine_ref(spec)
        return value

    @field_validator("http_allowed_networks")
    @classmethod
    def _valid_networks(cls, value: list[str]) -> list[str]:
        for network in value:
            ipaddress.ip_network(network, strict=False)
        return value

    @model_validator(mode="after")
    def _heartbeat_below_session(self) -> Settings:
        if self.kafka_heartbeat_interval_ms * 3 > self.kafka_session_timeout_ms:
            raise ValueError("kafka_heartbeat_interval_ms must be at most a third of kafka_session_timeout_ms")
        if self.frames_per_video > self.max_frames_per_job:
            raise ValueError("frames_per_video must be at most max_frames_per_job")
        if self.kafka_sasl_mechanism and not self.kafka_security_protocol.startswith("SASL"):
            raise ValueError("kafka_sasl_mechanism needs kafka_security_protocol SASL_PLAINTEXT or SASL_SSL")
        return self

    @property
    def aggregation_rule(self) -> AggregationRule:
        return AggregationRule.parse(self.aggregation)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_FILE_ENV)
        if config_file:
            if not Path(config_file).is_file():
                raise FileNotFoundError(f"{CONFIG_FILE_ENV}={config_file} does not exist")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        secrets_dir = os.environ.get(SECRETS_DIR_ENV)
        if secrets_dir:
            if not Path(secrets_dir).is_dir():
                raise ConfigurationError(f"{SECRETS_DIR_ENV}={secrets_dir} is not a folder")
            file_secret_settings = SecretsSettingsSource(settings_cls, secrets_dir=secrets_dir)
        return (*sources, file_secret_settings)


def read_secret_file(path: Path, setting: str) -> str:
    """A secret file's text without its one trailing newline (``echo pw > file``); unreadable is a ``ValueError``."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ValueError(f"{setting}: cannot read {path}: {reason}") from None
    if text.endswith("\n"):
        text = text[:-2] if text.endswith("\r\n") else text[:-1]
    return text


def url_with_password(url: str, password: str) -> str:
    """``url`` with ``password`` set through SQLAlchemy's URL (quoted as a URL needs); one that has a password
    already is refused, so two sources never silently disagree."""
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise ValueError(f"database_url: not a SQLAlchemy URL: {e}") from None
    if parsed.get_backend_name() == "sqlite":
        raise ValueError("database_password is set, but a SQLite database_url takes none")
    if parsed.password is not None:
        raise ValueError("database_url holds a password and database_password(_file) gives one too: keep one")
    return parsed.set(password=password).render_as_string(hide_password=False)


_ENGINE_REF = re.compile(r"^(?P<name>[^@\s]+)(?:@v?(?P<version>\d+))?$")


def engine_ref(text: str) -> tuple[str, int | None]:
    """``NAME`` (the store's current version) or ``NAME@VERSION`` (``NAME@v3`` too) → (name, version or None)."""
    match = _ENGINE_REF.match(text.strip())
    if match is None:
        raise ValueError(f"an engine is named NAME or NAME@VERSION, not {text!r}")
    version = match.group("version")
    return match.group("name"), None if version is None else int(version)


def unknown_variables(environ: Mapping[str, str] = os.environ) -> list[tuple[str, str | None]]:
    """``DEEPSIFT_*`` variables that name no setting, each with the closest setting's variable (a likely typo):
    pydantic-settings ignores them, so a misspelt variable would otherwise change nothing, silently."""
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | OTHER_VARIABLES
    unknown = sorted(
        name
        for name in environ
        if name.upper().startswith(ENV_PREFIX)
        and name.upper() not in known
        and not name.upper().startswith("DEEPSIFT_TEST_")
    )
    return [(name, _closest(name.upper(), known)) for name in unknown]


def _closest(variable: str, known: set[str]) -> str | None:
    """Compared without the shared prefix, which would make every name look alike."""
    suffixes = {name[len(ENV_PREFIX) :]: name for name in known}
    found = difflib.get_close_matches(variable[len(ENV_PREFIX) :], suffixes, n=1, cutoff=0.75)
    return suffixes[found[0]] if found else None
