"""What ``daemon scan`` and ``daemon run`` set up alike from the settings: the judge configuration, the
decoder (DALI's isolated worker started up front when it is chosen, so a broken GPU set-up fails at start,
not on the first video) and how engines are loaded (threads, device)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import structlog

from deepsift.daemon.pipeline import JudgeConfig
from deepsift.daemon.pipeline.records import UploadSignals
from deepsift.daemon.settings import Settings
from deepsift.daemon.uploads import NearDuplicatePolicy, ReusePolicy
from deepsift.engines.backends import BackendOptions, LoadedEngine, load_engine
from deepsift.engines.budgets import MediaBudget
from deepsift.engines.decoders import Decoder, DecoderOptions, open_decoder
from deepsift.engines.errors import DeepsiftError

log = structlog.get_logger(__name__)


def start_decoder(settings: Settings) -> Decoder:
    """The decoder the daemon decodes with (``auto`` resolved), built once; the DALI worker is started when that is
    DALI. A worker that cannot start fails start-up when ``dali`` was asked for explicitly; under ``auto`` the daemon
    decodes with PyAV. The caller closes it at shutdown."""
    options = DecoderOptions(
        device=settings.device, dali_timeout_s=settings.dali_timeout_s, dali_max_duration_s=settings.dali_max_duration_s
    )
    return open_decoder(settings.decoder, options)


def media_budget(settings: Settings) -> MediaBudget:
    """The per-job pixel, length and memory limits the settings give (see ``engines.budgets``)."""
    return MediaBudget(
        max_image_pixels=settings.max_image_pixels,
        max_frame_pixels=settings.max_frame_pixels,
        max_video_pixels=settings.max_video_pixels,
        max_duration_s=settings.max_duration_s,
        frame_budget_bytes=settings.job_frame_budget_mb << 20,
        detect_max_side=settings.detect_max_side,
    )


def judge_config(settings: Settings, decoder: Decoder) -> JudgeConfig:
    return JudgeConfig(
        frames_per_video=settings.frames_per_video,
        rule=settings.aggregation_rule,
        min_track_fraction=settings.min_track_fraction,
        decoder=decoder,
        max_media_bytes=settings.max_media_bytes,
        masks=settings.masks,
        budget=media_budget(settings),
        signals=upload_signals(settings),
    )


def upload_signals(settings: Settings) -> UploadSignals:
    """What prepare records beside the judgement; the C2PA trust anchors are read once, at start-up."""
    anchors = settings.content_credentials_trust_anchors
    pem = None
    if anchors is not None:
        try:
            pem = anchors.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DeepsiftError(f"content_credentials_trust_anchors: cannot read {anchors}: {e}") from e
        if "-----BEGIN CERTIFICATE-----" not in pem:
            raise DeepsiftError(f"content_credentials_trust_anchors: {anchors} holds no PEM certificate")
    return UploadSignals(settings.perceptual_hashes, settings.content_credentials, pem)


def reuse_policy(settings: Settings) -> ReusePolicy:
    return ReusePolicy(settings.reuse_verdicts, settings.reuse_max_age_s)


def near_duplicate_policy(settings: Settings) -> NearDuplicatePolicy:
    return NearDuplicatePolicy(
        settings.near_duplicates and settings.perceptual_hashes,
        settings.near_duplicate_max_distance,
        settings.near_duplicate_min_fraction,
    )


def engine_loader(settings: Settings) -> Callable[[Path], LoadedEngine]:
    options = BackendOptions(threads=settings.inference_threads, device=settings.device)
    return lambda path: load_engine(path, options=options)
