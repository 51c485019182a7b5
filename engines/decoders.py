"""The decoder registry: each way of turning media into sampled frames, built once at start-up and passed in.

A decoder is an object (``Decoder``): called with a source, a frame count and the job's budget, it returns
``DecodedMedia``; ``close()`` releases what it holds (DALI's worker process). ``DECODERS`` maps a name to a factory
that builds one from ``DecoderOptions``: ``pyav`` (``engines.media``, on the CPU), ``dali`` (DALI on the GPU in an
isolated worker for the media it routes there, PyAV for the rest: ``engines.dali``) and ``auto`` (``dali`` where a
CUDA device and DALI are present, else ``pyav``). The daemon opens its decoder with ``open_decoder``; the trainer
builds ``pyav`` from the same registry, so both decode through one set of decoders.

Importing this module imports neither ``nvidia.dali`` (only DALI's worker process does) nor torch (only a look for
a CUDA device, or frames handed to one, does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol

import structlog

from deepsift.engines.budgets import MediaBudget
from deepsift.engines.dali import DaliDecoder, DaliSettings, DecoderFailure, dali_missing
from deepsift.engines.errors import DeepsiftError
from deepsift.engines.media import DEFAULT_BUDGET, DecodedMedia, MediaSource, decode_sampled
from deepsift.engines.registry import Registry

log = structlog.get_logger(__name__)

# Decoders that hold nothing (no process, no GPU memory), so a bare name may stand for one (``named_decoder``).
STATELESS_DECODERS = frozenset({"pyav"})


class Decoder(Protocol):
    """``n_frames`` sampled frames of the media, upright RGB, refused or downscaled as ``budget`` says before
    decoding; ``name`` is the registry entry it was built as, ``close`` releases what it holds."""

    @property
    def name(self) -> str: ...

    def __call__(
        self, source: MediaSource, n_frames: int = 32, *, budget: MediaBudget = DEFAULT_BUDGET
    ) -> DecodedMedia: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class DecoderOptions:
    """What the factories take from the settings."""

    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:N": DALI runs only on a CUDA device (auto: one if present)
    dali_timeout_s: float = 30.0  # one video's decode in DALI's worker, after which PyAV decodes it
    dali_max_duration_s: float = 1800.0  # longer videos go to PyAV


DecoderFactory = Callable[[DecoderOptions], Decoder]
DECODERS: Registry[DecoderFactory] = Registry("decoder")


@dataclass(frozen=True)
class PyAVDecoder:
    """The ``pyav`` decoder: ``engines.media.decode_sampled`` on the CPU, frames as numpy arrays."""

    name: ClassVar[str] = "pyav"

    def __call__(
        self, source: MediaSource, n_frames: int = 32, *, budget: MediaBudget = DEFAULT_BUDGET
    ) -> DecodedMedia:
        return decode_sampled(source, n_frames, budget=budget)

    def close(self) -> None:
        """Nothing to release."""


@DECODERS.register("pyav")
def _pyav(options: DecoderOptions) -> Decoder:
    return PyAVDecoder()


@DECODERS.register("dali")
def _dali(options: DecoderOptions) -> DaliDecoder:
    """DALI's decoder; its worker starts with the first video routed to it (``open_decoder`` starts it up front)."""
    return DaliDecoder(dali_settings(options))


@DECODERS.register("auto")
def _auto(options: DecoderOptions) -> Decoder:
    """``dali`` where ``options.device`` is (or, being ``auto``, finds) a CUDA device and DALI is installed, else
    ``pyav``."""
    return DECODERS.get(choose_decoder("auto", options.device))(options)


def dali_settings(options: DecoderOptions) -> DaliSettings:
    """DALI's settings for ``options``: frames go to the CUDA device named, or to the first one."""
    device = options.device if options.device.startswith("cuda") else "cuda:0"
    return DaliSettings(device=device, timeout_s=options.dali_timeout_s, max_duration_s=options.dali_max_duration_s)


def choose_decoder(requested: str, device: str = "auto") -> str:
    """The decoder to run for setting ``requested`` on ``device`` ("auto", "cpu", "cuda", "cuda:N").

    ``auto`` is ``dali`` when the device is CUDA (or auto with a GPU present) and DALI is installed, else
    ``pyav``. An explicit ``dali`` that cannot run raises, naming what is missing; an unknown name raises ``KeyError``.
    """
    if requested not in ("auto", "dali"):
        DECODERS.get(requested)  # an unknown name raises, listing the registered ones
        return requested
    missing = dali_missing(device)
    if missing is None:
        return "dali"
    if requested == "dali":
        raise DeepsiftError(f"decoder 'dali' cannot run: {missing}")
    return "pyav"


def open_decoder(requested: str, options: DecoderOptions) -> Decoder:
    """The decoder for setting ``requested`` (``auto`` resolved), built at start-up; the caller closes it.

    DALI's worker is started here, so a broken GPU set-up shows at start, not on the first video: it fails start-up
    when ``dali`` was asked for explicitly (``DeepsiftError``); under ``auto`` the decoder is PyAV instead.
    """
    chosen = choose_decoder(requested, options.device)
    if chosen == "dali":
        return _started_dali(requested, options)
    if requested == "auto":
        log.info("decoder_chosen", decoder=chosen, why_not_dali=dali_missing(options.device))
    return DECODERS.get(chosen)(options)


def _started_dali(requested: str, options: DecoderOptions) -> Decoder:
    decoder = _dali(options)
    try:
        decoder.start()
    except DecoderFailure as e:
        decoder.close()
        if requested == "dali":
            raise DeepsiftError(f"decoder 'dali' cannot run: {e}") from e
        log.warning("decoder_chosen", decoder="pyav", why_not_dali=str(e))
        return DECODERS.get("pyav")(options)
    return decoder


def named_decoder(name: str) -> Decoder:
    """The decoder a bare name stands for where nothing was opened at start-up (tests, tools): stateless ones only.

    ``dali`` and ``auto`` may run DALI's worker process, which someone must start and close, so a name is refused.
    """
    if name not in STATELESS_DECODERS:
        DECODERS.get(name)  # an unknown name raises, listing the registered ones
        raise ValueError(
            f"decoder {name!r} may run DALI's worker process, which is started and closed once: build it with "
            f"engines.decoders.open_decoder({name!r}, DecoderOptions(...)) and pass the decoder, not its name"
        )
    return DECODERS.get(name)(DecoderOptions())
