"""One small error hierarchy shared by the trainer and the daemon.

Permanent errors describe the input (corrupt media, an invalid job): they become an ``error``
verdict with their ``code`` (one of ``engines.codes.VerdictCode``) and are never retried. Retryable
errors describe the world (a broker or database that is down): the caller backs off and tries again.
"""

from __future__ import annotations

from deepsift.engines.codes import check_status


class DeepsiftError(Exception):
    """Base of every error deepsift raises on purpose."""


class RetryableError(DeepsiftError):
    """A dependency is unavailable for now; the same work may succeed later."""


class ConfigurationError(DeepsiftError):
    """A setting no wait can fix (a malformed URL, an unknown database or role, an unreadable secret file): the
    command says so in one line and exits with ``EX_CONFIG`` (78) instead of retrying."""


class PermanentError(DeepsiftError):
    """The input itself is bad; retrying cannot help. ``code`` is stored on the error verdict.

    ``code`` must be an error code of ``engines.codes.VerdictCode``; any other is refused here, where it is raised."""

    def __init__(self, code: str, detail: str) -> None:
        check_status(code, "error")
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class MediaError(PermanentError):
    """Media that cannot be read: empty, not media, corrupt, truncated, unsupported codec."""


class EngineError(DeepsiftError):
    """An engine that cannot be loaded or does not match its manifest; an operator must act."""
