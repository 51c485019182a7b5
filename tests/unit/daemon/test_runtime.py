"""Start-up choices shared by `daemon scan` and `daemon run`: the decoder and the judge settings."""

from __future__ import annotations

import pytest

from deepsift.daemon.pipeline import JudgeConfig
from deepsift.daemon.runtime import judge_config, start_decoder
from deepsift.daemon.settings import Settings
from deepsift.engines import dali
from deepsift.engines.aggregate import AggregationRule
from deepsift.engines.budgets import MediaBudget
from deepsift.engines.errors import DeepsiftError


@pytest.fixture
def gpu_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine where DALI looks usable: a CUDA device and nvidia.dali (no worker has been tried)."""
    monkeypatch.setattr(dali, "_cuda_available", lambda: True)
    monkeypatch.setattr(dali, "_dali_installed", lambda: True)


def test_auto_on_a_cpu_device_decodes_with_pyav() -> None:
    decoder = start_decoder(Settings(decoder="auto", device="cpu"))
    assert decoder.name == "pyav"


def test_an_explicit_dali_decoder_that_cannot_run_fails_at_start_up_naming_why() -> None:
    with pytest.raises(DeepsiftError, match=r"dali.*not a CUDA device"):
        start_decoder(Settings(decoder="dali", device="cpu"))


def test_the_judge_settings_carry_the_chosen_decoder_and_the_masks_setting() -> None:
    decoder = start_decoder(Settings(decoder="pyav"))
    config = judge_config(Settings(frames_per_video=7, masks=True, aggregation="topk:0.5"), decoder)
    assert (config.decoder, config.frames_per_video, config.masks, str(config.rule)) == (decoder, 7, True, "topk:0.5")


def test_a_judge_config_takes_the_stateless_decoders_name_and_refuses_a_gpu_decoders() -> None:
    # Given the name "pyav", Then the judge config holds the registry's PyAV decoder
    rule = AggregationRule.parse("mean")
    assert JudgeConfig(4, rule, 0.1, "pyav", 10**6).decoder.name == "pyav"
    # Given "dali" or "auto", which may run a worker process, Then a name is refused, saying how to build one
    for name in ("dali", "auto"):
        with pytest.raises(ValueError, match="open_decoder"):
            JudgeConfig(4, rule, 0.1, name, 10**6)
    with pytest.raises(KeyError, match="registered: auto, dali, pyav"):
        JudgeConfig(4, rule, 0.1, "ffmpeg-gpu", 10**6)


def test_auto_falls_back_to_pyav_when_the_dali_worker_cannot_start(gpu_machine, monkeypatch) -> None:
    # Given a machine where DALI looks usable, but its worker fails to start (say, a driver too old for it)
    def failing_start(self) -> None:
        raise dali.DecoderFailure("dali_start_failed", "CUDA driver version is insufficient")

    monkeypatch.setattr(dali.IsolatedDecoder, "start", failing_start)
    # When the daemon starts with decoder=auto, it decodes with PyAV; with decoder=dali it refuses to start
    assert start_decoder(Settings(decoder="auto", device="cuda")).name == "pyav"
    with pytest.raises(DeepsiftError, match="insufficient"):
        start_decoder(Settings(decoder="dali", device="cuda"))


@pytest.mark.parametrize("requested", ["auto", "dali"])
def test_a_dali_decoder_is_started_at_start_up_with_the_settings(gpu_machine, monkeypatch, requested: str) -> None:
    # Given a machine where DALI's worker starts
    started: list[dali.IsolatedDecoder] = []
    monkeypatch.setattr(dali.IsolatedDecoder, "start", lambda self: started.append(self))
    # When the daemon starts
    settings = Settings(decoder=requested, device="cuda:1", dali_timeout_s=7.0, dali_max_duration_s=90.0)
    decoder = start_decoder(settings)
    try:
        # Then it decodes with DALI on that device, under the settings' limits, its worker started up front
        assert isinstance(decoder, dali.DaliDecoder) and decoder.name == "dali"
        assert [w is decoder.worker for w in started] == [True]
        assert (decoder.settings.device, decoder.settings.timeout_s, decoder.settings.max_duration_s) == (
            "cuda:1",
            7.0,
            90.0,
        )
    finally:
        decoder.close()


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
