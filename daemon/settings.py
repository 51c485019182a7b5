"""Daemon settings: environment variables prefixed ``DEEPSIFT_``, an optional TOML file, then defaults.

Precedence, highest first: explicit arguments, environment (``DEEPSIFT_DATABASE_URL`` …), the TOML file
named by ``DEEPSIFT_CONFIG_FILE``, the defaults below. The defaults are the embedded set-up: SQLite and
the engine store under ``./var``. Preprocessing is *not* configured here — it comes from the engine manifest.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from engines.aggregate import AggregationRule

CONFIG_FILE_ENV = "DEEPSIFT_CONFIG_FILE"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEEPSIFT_", extra="forbid", frozen=True)

    database_url: str = Field(default="sqlite:///var/deepsift.db", description="SQLAlchemy URL of the verdict store")
    engine_store: Path = Field(default=Path("var/engines"), description="root of the versioned engine store")
    engine_name: str = Field(default="demo", description="engine to serve; its 'current' version is loaded")
    engine_version: int | None = Field(default=None, description="pin a version instead of following 'current'")
    frames_per_video: int = Field(default=32, ge=1, le=1024, description="evenly spaced frames sampled per video")
    aggregation: str = Field(default="mean", description="frame→video rule: mean, max, topk[:fraction], quantile[:q]")
    min_track_fraction: float = Field(
        default=0.1, ge=0.0, le=1.0, description="tracks seen in fewer frames can't decide"
    )
    decoder: Literal["auto", "pyav"] = Field(default="auto", description="media decoder; auto = best available")
    device: str = Field(default="cpu", description="torch device for face detection")
    inference_threads: int = Field(default=0, ge=0, description="engine threads; 0 = runtime default")
    prefetch: int = Field(default=2, ge=1, le=64, description="media decoded ahead of inference")
    max_media_bytes: int = Field(default=2 << 30, gt=0, description="larger media become error verdicts")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "console"] = Field(default="auto", description="auto = JSON unless a terminal")

    @field_validator("aggregation")
    @classmethod
    def _known_rule(cls, value: str) -> str:
        AggregationRule.parse(value)
        return value

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
        return (*sources, file_secret_settings)
