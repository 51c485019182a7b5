"""structlog set-up shared by the ``daemon`` and the ``trainer``: JSON lines for machines, readable lines on a
terminal, and the stdlib ``logging`` records of libraries (alembic, kafka-python, SQLAlchemy) through the same
renderer, so a JSON log holds nothing but JSON lines.

Both write to whatever ``sys.stderr`` is when a line is written, not when logging was configured (a test's
captured stream, a redirected one)."""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

import structlog

LOG_FORMATS = ("auto", "json", "console")
LOG_FORMAT_ENV = "DEEPSIFT_LOG_FORMAT"  # the daemon's setting `log_format`; the trainer reads the same variable
LOG_LEVEL_ENV = "DEEPSIFT_LOG_LEVEL"
_QUIET = {"alembic.runtime.plugins": logging.WARNING}  # one line per plugin, every run
_state = {"json": False}


# One lock for every line written, structlog's and the stdlib handler's: each line is written whole, by one call,
# so lines of two threads never interleave (a JSON log with two events on one line is unreadable).
_WRITE_LOCK = threading.Lock()


def _write_line(line: str) -> None:
    with _WRITE_LOCK:
        stream = sys.stderr
        stream.write(line + "\n")
        stream.flush()


class _StderrHandler(logging.StreamHandler):
    """A stream handler on the current ``sys.stderr``, writing under the shared line lock."""

    @property
    def stream(self) -> Any:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # logging.StreamHandler.__init__ assigns it
        pass

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _write_line(self.format(record))
        except Exception:
            self.handleError(record)


class _StderrLogger:
    """structlog's final logger: each rendered event one whole line on the current ``sys.stderr``."""

    def msg(self, message: str) -> None:
        _write_line(message)

    debug = info = warning = warn = error = err = critical = exception = fatal = failure = log = msg


def _stderr_logger(*args: Any) -> _StderrLogger:
    return _StderrLogger()


def is_json(fmt: str) -> bool:
    """Whether ``fmt`` means JSON lines here: ``json``, or ``auto`` with stderr not a terminal."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
    return fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())


def json_logs() -> bool:
    """Whether the last ``configure_logging`` chose JSON lines (progress bars stay off then)."""
    return _state["json"]


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    """Route structlog and stdlib logging to stderr, as JSON unless ``fmt`` (or a terminal, for ``auto``) says
    readable lines."""
    json_output = is_json(fmt)
    _state["json"] = json_output
    renderer = structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer(colors=False)
    stamped = [structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True)]
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *stamped, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *stamped],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    handler.set_name("deepsift")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "deepsift"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name, quiet in _QUIET.items():
        logging.getLogger(name).setLevel(quiet)


def is_configured() -> bool:
    """Whether ``configure_logging`` owns the root logger's output (then ``alembic.ini`` must not replace it)."""
    return any(h.get_name() == "deepsift" for h in logging.getLogger().handlers)
