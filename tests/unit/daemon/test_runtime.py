"""Start-up choices shared by `daemon scan` and `daemon run`: the decoder and the judge settings."""

from __future__ import annotations

import pytest

from deepsift.daemon.runtime import judge_config, start_decoder
from deepsift.daemon.settings import Settings
from deepsift.engines.budgets import MediaBudget
from deepsift.engines.errors import DeepsiftError


def test_auto_on_a_cpu_device_decodes_with_pyav() -> None:
    assert start_decoder(Settings(decoder="auto", device="cpu")) == "pyav"


def test_an_explicit_dali_decoder_that_cannot_run_fails_at_start_up_naming_why() -> None:
    with pytest.raises(DeepsiftError, match=r"dali.*not a CUDA device"):
        start_decoder(Settings(decoder="dali", device="cpu"))


def test_the_judge_settings_carry_the_chosen_decoder_and_the_masks_setting() -> None:
    config = judge_config(Settings(frames_per_video=7, masks=True, aggregation="topk:0.5"), "pyav")
    assert (config.decoder, config.frames_per_video, config.masks, str(config.rule)) == ("pyav", 7, True, "topk:0.5")


def test_auto_falls_back_to_pyav_when_the_dali_worker_cannot_start(monkeypatch) -> None:
    # Given a machine where DALI looks usable, but its worker fails to start (say, a driver too old for it)
    from deepsift.engines import dali

    monkeypatch.setattr(dali, "choose_decoder", lambda requested, device: "dali")

    def failing_start(self) -> None:
        raise dali.DecoderFailure("dali_start_failed", "CUDA driver version is insufficient")

    monkeypatch.setattr(dali.IsolatedDecoder, "start", failing_start)
    # When the daemon starts with decoder=auto, it decodes with PyAV; with decoder=dali it refuses to start
    assert start_decoder(Settings(decoder="auto", device="cuda")) == "pyav"
    with pytest.raises(DeepsiftError, match="insufficient"):
        start_decoder(Settings(decoder="dali", device="cuda"))


def test_the_judge_settings_carry_the_media_budget() -> None:
    # Given non-default limits, When the judge configuration is made, Then its budget holds them (MB made bytes)
    settings = Settings(
        max_image_pixels=50_000_000,
        max_frame_pixels=9_000_000,
        max_video_pixels=10**11,
        max_duration_s=600.0,
        job_frame_budget_mb=256,
        detect_max_side=960,
    )
    budget = judge_config(settings, "pyav").budget
    assert (budget.max_image_pixels, budget.max_frame_pixels, budget.max_video_pixels) == (50_000_000, 9_000_000, 1e11)
    assert (budget.max_duration_s, budget.frame_budget_bytes, budget.detect_max_side) == (600.0, 256 << 20, 960)


def test_the_default_settings_give_the_engines_default_budget() -> None:
    # The trainer and tests judge with MediaBudget(); the daemon's defaults must be the same limits
    assert judge_config(Settings(), "pyav").budget == MediaBudget()
