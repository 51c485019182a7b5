"""Every code an ``abstained`` or ``error`` verdict may carry: one closed enumeration.

A code is what a dashboard groups verdicts by, so the set is closed: ``PermanentError`` and the daemon's
``VerdictRecord`` refuse a code that is not listed here, and the README's "Verdict codes" table lists the same
codes (a unit test compares them). A new code is added here, with its status and meaning, and to the README.
A code is never removed or renamed: verdict rows keep it and must still load; one no longer raised stays, its
meaning saying so.

The codes live in ``engines`` (the lowest layer) because engines raise the media codes and the daemon imports
engines, never the reverse. Members are ``str``, so a caller may pass ``"no_face"`` or ``VerdictCode.NO_FACE``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

CodeStatus = Literal["abstained", "error"]


class VerdictCode(StrEnum):
    """The code of an ``abstained`` or ``error`` verdict; ``CODES`` gives each its group, status and meaning."""

    # path: a local path that cannot be read as a file (daemon scan's files, file:// jobs)
    NOT_FOUND = "not_found"
    NOT_REGULAR_FILE = "not_regular_file"
    SYMLINK_LOOP = "symlink_loop"
    UNREADABLE = "unreadable"
    # job: the job message and what it asks for
    INVALID_JOB = "invalid_job"
    TOO_MANY_FRAMES = "too_many_frames"
    POISON_JOB = "poison_job"
    JOB_ID_REUSED = "job_id_reused"
    MEDIA_TYPE_MISMATCH = "media_type_mismatch"
    # fetch: the guards in front of a job's media, and its download
    FORBIDDEN_PATH = "forbidden_path"
    FORBIDDEN_URL = "forbidden_url"
    FETCH_FAILED = "fetch_failed"
    HASH_MISMATCH = "hash_mismatch"
    # budget: media over the limits, refused before anything large is allocated (or an allocation that failed)
    TOO_LARGE = "too_large"
    TOO_MANY_PIXELS = "too_many_pixels"
    TOO_LONG = "too_long"
    TOO_SMALL = "too_small"
    OUT_OF_MEMORY = "out_of_memory"
    # media: bytes that cannot be read as media
    EMPTY_MEDIA = "empty_media"
    NOT_MEDIA = "not_media"
    CORRUPT_MEDIA = "corrupt_media"
    TRUNCATED_MEDIA = "truncated_media"
    NO_VIDEO_STREAM = "no_video_stream"
    UNSUPPORTED_CODEC = "unsupported_codec"
    # faces: the engine declines to judge
    NO_FACE = "no_face"
    # inference
    INFERENCE_FAILED = "inference_failed"
    # storage
    STORE_FAILED = "store_failed"
    UNSTORABLE = "unstorable"
    # internal
    INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True)
class CodeInfo:
    """Where a code belongs, the one status its verdicts have, and what it means in a line."""

    group: str
    status: CodeStatus
    meaning: str


def _error(group: str, meaning: str) -> CodeInfo:
    return CodeInfo(group, "error", meaning)


CODES: dict[VerdictCode, CodeInfo] = {
    VerdictCode.NOT_FOUND: _error("path", "a missing path, a dangling symbolic link or a path through a file"),
    VerdictCode.NOT_REGULAR_FILE: _error(
        "path", "a FIFO, socket, device or folder where a media file was expected; never opened"
    ),
    VerdictCode.SYMLINK_LOOP: _error("path", "a symbolic link that leads back to itself"),
    VerdictCode.UNREADABLE: _error("path", "a file that cannot be opened or read, or a folder that cannot be listed"),
    VerdictCode.INVALID_JOB: _error(
        "job", "the message is not a valid v1 job (schema, size, nesting, Unicode, metadata)"
    ),
    VerdictCode.TOO_MANY_FRAMES: _error("job", "the job asks for more frames than `max_frames_per_job`"),
    VerdictCode.POISON_JOB: _error(
        "job", "`poison_max_attempts` deliveries of the message died unfinished; not tried again"
    ),
    VerdictCode.JOB_ID_REUSED: _error("job", "a job id this engine judged before arrives with different media"),
    VerdictCode.MEDIA_TYPE_MISMATCH: _error("job", "the job's declared `media_type` is not the media's"),
    VerdictCode.FORBIDDEN_PATH: _error(
        "fetch", "a `file://` URL that is relative, uses `..` or leaves the `media_roots`"
    ),
    VerdictCode.FORBIDDEN_URL: _error(
        "fetch", "a URL the guards refuse: scheme, credentials, host, private address, redirects"
    ),
    VerdictCode.FETCH_FAILED: _error(
        "fetch", "the download failed: name resolution, HTTP status, TLS or every attempt"
    ),
    VerdictCode.HASH_MISMATCH: _error("fetch", "the media's sha256 is not the job's `content_sha256`"),
    VerdictCode.TOO_LARGE: _error("budget", "more bytes than `max_media_bytes` (or `http_max_bytes` for a download)"),
    VerdictCode.TOO_MANY_PIXELS: _error("budget", "an image, a frame or a whole video over its pixel budget"),
    VerdictCode.TOO_LONG: _error("budget", "a video longer than the budget's maximum duration"),
    VerdictCode.TOO_SMALL: _error(
        "budget", "under the minimum side, or smaller than the face detector's smallest face"
    ),
    VerdictCode.OUT_OF_MEMORY: _error(
        "budget", "an allocation the budgets did not foresee failed while preparing the job"
    ),
    VerdictCode.EMPTY_MEDIA: _error("media", "the media has 0 bytes"),
    VerdictCode.NOT_MEDIA: _error("media", "no demuxer recognises the data"),
    VerdictCode.CORRUPT_MEDIA: _error(
        "media", "a damaged container or stream: no streams, cannot demux, no frame decodes"
    ),
    VerdictCode.TRUNCATED_MEDIA: _error("media", "the media ends well before the frames or bytes it declares"),
    VerdictCode.NO_VIDEO_STREAM: _error("media", "the container holds only audio, subtitle or data streams"),
    VerdictCode.UNSUPPORTED_CODEC: _error("media", "no decoder for the video stream's codec"),
    VerdictCode.NO_FACE: CodeInfo(
        "faces", "abstained", "a face-mode engine found no face above its confidence threshold"
    ),
    VerdictCode.INFERENCE_FAILED: _error("inference", "the engine failed on this job's pixels, also when run alone"),
    VerdictCode.STORE_FAILED: _error(
        "storage", "the database refused the verdict; this bare error verdict replaces it"
    ),
    VerdictCode.UNSTORABLE: _error(
        "storage", "even the `store_failed` verdict was refused: a dead letter, no stored verdict"
    ),
    VerdictCode.INTERNAL_ERROR: _error(
        "internal", "a bug or unforeseen failure while handling this job; the rest go on"
    ),
}


def verdict_code(code: object) -> VerdictCode:
    """The member ``code`` names; a code outside the enumeration is a programming error (add it to ``CODES``)."""
    if not isinstance(code, str):
        raise TypeError(f"a verdict code is a str, not {type(code).__name__}: {code!r}")
    try:
        return VerdictCode(code)
    except ValueError:
        raise ValueError(f"unknown verdict code {code!r}: add it to deepsift.engines.codes.VerdictCode") from None


def check_status(code: object, status: str) -> VerdictCode:
    """The member ``code`` names, refused unless its verdicts have ``status`` (``no_face`` abstains, the rest are
    errors): a code is the reason for its status, so a mismatch is a programming error too."""
    member = verdict_code(code)
    expected = CODES[member].status
    if status != expected:
        raise ValueError(f"verdict code {member.value!r} goes with status {expected!r}, not {status!r}")
    return member
