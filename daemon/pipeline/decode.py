"""The decode stage: sampled frames of one job's media through the decoder built at start-up
(``engines.decoders``: PyAV, DALI, or DALI where it can), within the job's ``MediaBudget``."""

from __future__ import annotations

from pathlib import Path

from deepsift.daemon.pipeline.records import JudgeConfig
from deepsift.engines.media import DecodedMedia


def decode(media: Path | bytes, config: JudgeConfig) -> DecodedMedia:
    """``frames_per_video`` frames (one for a still); media over the budget is refused from its header."""
    return config.decoder(media, config.frames_per_video, budget=config.budget)


def decoder_note(decoded: DecodedMedia) -> str | None:
    """What the verdict says about decoding: why DALI was passed over, and ``downscaled:<scale>`` when the frame
    budget made the kept frames smaller than the media (e.g. ``frame_budget downscaled:0.567``)."""
    notes = [decoded.fallback_reason] if decoded.fallback_reason else []
    if decoded.scale < 1.0:
        notes.append(f"downscaled:{decoded.scale:.3g}")
    return " ".join(notes) or None
