"""The trainer's logs: ``--log-format`` (env ``DEEPSIFT_LOG_FORMAT``, as the daemon's ``log_format``) over the
shared set-up of ``engines.logs``, and progress lines for the loops that take minutes (``evaluate``'s predictions).

In JSON mode every line on stderr is a JSON object (progress included, as ``progress`` events) and ``fit``'s
progress bar stays off; on a terminal the same events are readable lines. Command results stay on stdout."""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import structlog

from deepsift.engines.errors import DeepsiftError
from deepsift.engines.logs import LOG_FORMAT_ENV, LOG_FORMATS, LOG_LEVEL_ENV, configure_logging

log = structlog.get_logger("deepsift.trainer")
PROGRESS_LINES = 10  # a progress line every tenth of the batches, and at the end


def add_log_option(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """``--log-format``; ``suppress`` for a subcommand's copy, so a value given before the subcommand stands."""
    default = argparse.SUPPRESS if suppress else os.environ.get(LOG_FORMAT_ENV) or "auto"
    parser.add_argument("--log-format", choices=LOG_FORMATS, default=default,
                        help=f"logs on stderr: json lines, console lines, or auto (json unless a terminal); "
                        f"env {LOG_FORMAT_ENV}")  # fmt: skip


def configure_logs(args: argparse.Namespace) -> None:
    """Logging as ``--log-format`` (and ``DEEPSIFT_LOG_LEVEL``) say; a bad value from the environment is one line."""
    try:
        configure_logging(os.environ.get(LOG_LEVEL_ENV) or "INFO", getattr(args, "log_format", "auto"))
    except ValueError as e:
        raise DeepsiftError(f"{LOG_FORMAT_ENV}: {e}") from e


def log_line(message: str) -> None:
    """A plain message as a log event (``rebuild-engine``'s steps)."""
    log.info(message)


@dataclass
class Progress:
    """One ``progress`` event every ``1/PROGRESS_LINES`` of ``total`` batches and at the last: batches and items
    done, the rate and the time left at that rate."""

    task: str
    total: int  # batches
    done: int = 0
    items: int = 0
    started: float = field(default_factory=time.monotonic)

    def step(self, items: int) -> None:
        self.done, self.items = self.done + 1, self.items + items
        every = max(1, math.ceil(self.total / PROGRESS_LINES))
        if self.done % every and self.done != self.total:
            return
        elapsed = time.monotonic() - self.started
        rate = self.items / elapsed if elapsed > 0 else float("inf")
        left = (self.total - self.done) * elapsed / self.done
        log.info(
            "progress", task=self.task, batches=f"{self.done}/{self.total}", items=self.items,
            percent=round(100 * self.done / max(1, self.total)), items_per_s=round(rate, 1), eta_s=round(left, 1),
        )  # fmt: skip


def progress_of(task: str | None, total: int) -> Progress | Any:
    """A ``Progress`` for ``task``, or a silent stand-in when no task is named (``fit``'s validations)."""
    return Progress(task, total) if task else _Silent()


class _Silent:
    def step(self, items: int) -> None: ...


def event(name: str, **fields: Any) -> None:
    """One trainer log event (``validation``, ``target_fpr_below_resolution``, …)."""
    log.info(name, **fields)


def warning(name: str, **fields: Any) -> None:
    log.warning(name, **fields)
