"""C2PA Content Credentials read from media: a small summary stored beside each verdict.

A camera, an editor or a generator may sign media with a C2PA manifest (JUMBF in a JPEG's APP11 segments, a
PNG ``caBX`` chunk, an MP4 ``uuid`` box, ...). Its assertions may declare how the media was made: the IPTC
*digital source type* of a ``c2pa.created`` action says ``digitalCapture`` for a camera and
``trainedAlgorithmicMedia`` for a generative model. That declaration is evidence beside the detector's score,
never a replacement for it: credentials are easy to strip, and only a signature that chains to a trusted root
says who made the claim. ``read_credentials`` reads them with the maintained library c2pa-python
(``import c2pa``) and returns ``Credentials``, whose ``as_json`` goes into a SQL JSON column.

States, from c2pa's validation report of the active manifest:

- ``valid``: c2pa reports no validation failure: the hashes match and the signer chains to a trusted root
  (c2pa's ``Trusted``). Without ``trust_anchors`` no root is trusted, so ``valid`` needs them.
- ``untrusted``: the manifest and the media are intact, but the only failures are about trust
  (``signingCredential.untrusted``, ``timeStamp.untrusted``): a well-formed signature from an unknown signer.
  c2pa itself calls this ``Valid``.
- ``invalid``: any other failure, e.g. ``assertion.dataHash.mismatch`` (media changed after signing), a
  signature that does not verify, an expired or revoked certificate.
- ``malformed``: c2pa found a manifest (or something claiming to be one) but could not read it: corrupt
  JUMBF or CBOR, a container it cannot parse, or a manifest kept only at a remote URL (never fetched, see
  below). ``errors`` holds the library's message.

``read_credentials`` returns ``None`` when the media carries no manifest or is of a type c2pa cannot read.
Reading never touches the network: remote manifests and OCSP are not fetched and no host is allowed, so the
result depends on the bytes and ``trust_anchors`` alone. A file is streamed to c2pa from an open file object,
so a large video is never held in memory (a 300 MB MP4 without a manifest reads in ~30 ms: c2pa scans its
segments or top-level boxes, not the frames). Each call builds its own ``c2pa.Context`` (well under a
millisecond): nothing global is configured and calls are safe from worker threads.
"""

from __future__ import annotations

import io
import json
import os
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

CredentialState = Literal["valid", "untrusted", "invalid", "malformed"]

# IPTC NewsCodes digitalsourcetype (https://cv.iptc.org/newscodes/digitalsourcetype/), last path segment.
# Generative AI: media a model trained on sampled content made, whole or composited in. ``algorithmicMedia``
# (made purely by an algorithm, no training data) is counted too: like the others it shows no captured scene.
AI_GENERATED_SOURCE_TYPES = frozenset(
    {"trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia", "algorithmicMedia"}
)
# An edit that declares one of these put a trained model's output into the media (inpainting, a face swap).
AI_EDIT_SOURCE_TYPES = frozenset({"trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia"})
# Actions that bring the media into being rather than edit it: their source type is the whole media's.
NON_EDIT_ACTIONS = frozenset({"c2pa.created", "c2pa.opened"})
ACTIONS_LABELS = frozenset({"c2pa.actions", "c2pa.actions.v2"})
# Failures that say only "this signer (or time stamp authority) is not on a trust list".
TRUST_FAILURES = frozenset({"signingCredential.untrusted", "timeStamp.untrusted"})

MAX_ERRORS, MAX_ERROR_CHARS = 16, 200
MAX_SOURCE_TYPES, MAX_SOURCE_TYPE_CHARS = 16, 64
MAX_NAME_CHARS = 200
_MAX_WALK_DEPTH = 12

# C2PA network access is off and no host is allowed: verification must never leave the machine.
_READ_SETTINGS: dict[str, Any] = {
    "verify": {"verify_after_reading": True, "verify_trust": True, "remote_manifest_fetch": False, "ocsp_fetch": False},
    "core": {"allowed_network_hosts": []},
}

_SUFFIX_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".jpe": "image/jpeg",
    ".png": "image/png",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".heic": "image/heic",
    ".heif": "image/heif",
    ".avif": "image/avif",
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".mov": "video/quicktime",
    ".avi": "video/x-msvideo",
}
_FTYP_BRANDS = {
    b"qt  ": "video/quicktime",
    b"heic": "image/heic",
    b"heix": "image/heic",
    b"mif1": "image/heif",
    b"msf1": "image/heif",
    b"avif": "image/avif",
    b"avis": "image/avif",
}
_UNKNOWN_TYPES = frozenset({"", "application/octet-stream"})


@dataclass(frozen=True)
class Credentials:
    """What the active C2PA manifest of a file says, and whether c2pa could verify it (see the module docstring).

    ``signer`` is the signing certificate's issuer as c2pa reports it (the subject's organization), else its
    common name. ``claim_generator`` is the v1 ``claim_generator`` string, else the first
    ``claim_generator_info`` entry as ``name/version``. ``digital_source_types`` are the IPTC digital source types
    found anywhere in the active manifest's assertions (actions' ``digitalSourceType``, IPTC photo metadata's
    ``Iptc4xmpExt:DigitalSourceType``, ...), shortened to their last path segment, in first-seen order.
    ``ai_generated`` is true when one of them is in ``AI_GENERATED_SOURCE_TYPES``. ``ai_edited`` is true when a
    ``c2pa.actions``/``c2pa.actions.v2`` action other than ``c2pa.created``/``c2pa.opened`` (``c2pa.edited``,
    ``c2pa.placed``, ...) declares a source type in ``AI_EDIT_SOURCE_TYPES``; such media is ``ai_generated`` too.
    Ingredients' own manifests are not read. ``errors`` are c2pa's failure codes for the active manifest (or its
    error message when ``malformed``), at most ``MAX_ERRORS`` of at most ``MAX_ERROR_CHARS`` characters.
    Every string is stripped of control characters and capped, since the manifest's author chose it.
    """

    state: CredentialState
    signer: str | None
    claim_generator: str | None
    digital_source_types: tuple[str, ...]
    ai_generated: bool
    ai_edited: bool
    errors: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict with the same keys whatever the state, for a SQL JSON column."""
        return {
            "state": self.state,
            "signer": self.signer,
            "claim_generator": self.claim_generator,
            "digital_source_types": list(self.digital_source_types),
            "ai_generated": self.ai_generated,
            "ai_edited": self.ai_edited,
            "errors": list(self.errors),
        }


def read_credentials(
    path: str | os.PathLike[str] | bytes, mime_type: str | None = None, *, trust_anchors: str | None = None
) -> Credentials | None:
    """The Content Credentials of the file at ``path``, or None when it carries no C2PA manifest.

    Never raises for anything the media contains: a malformed or unreadable manifest gives state="malformed"
    with the error text in ``errors``; a tampered asset (hash mismatch) gives state="invalid"; a well-formed
    signature from a certificate not on a trust list gives "untrusted"; "valid" only when c2pa reports no
    validation failures. ``mime_type`` (e.g. "image/jpeg"), when given and not ``application/octet-stream``,
    is trusted over the file's magic bytes and suffix; a type c2pa cannot read gives None.

    ``path`` may also be the media's bytes (as ``engines.media.MediaSource`` allows), read from memory.
    ``trust_anchors``: a PEM bundle of root certificates (e.g. the C2PA trust list) a signer must chain to for
    "valid"; without it no signer is trusted. Raises ``ValueError`` when it holds no PEM certificate, and
    ``OSError`` when the file cannot be opened (a problem of the path, not of the media).
    """
    import c2pa  # ~60 ms on first use; a hard dependency of the daemon

    settings = _settings(trust_anchors)
    with io.BytesIO(path) if isinstance(path, bytes) else open(path, "rb") as stream:
        suffix = "" if isinstance(path, bytes) else Path(path).suffix
        media_type = _media_type(mime_type, suffix, stream.read(16))
        if media_type is None or media_type not in c2pa.Reader.get_supported_mime_types():
            return None
        stream.seek(0)
        try:
            with c2pa.Context.from_dict(settings) as context, c2pa.Reader(media_type, stream, context=context) as r:
                store = json.loads(r.json())
        except (c2pa.C2paError.ManifestNotFound, c2pa.C2paError.NotSupported):
            return None
        except (c2pa.C2paError, ValueError) as exc:  # ValueError: JSON the library wrote but cannot be parsed
            return _malformed(str(exc) or type(exc).__name__)
    return _summarize(store)


def _settings(trust_anchors: str | None) -> dict[str, Any]:
    if trust_anchors is None:
        return _READ_SETTINGS
    # c2pa checks anchors only when it reads a manifest and then fails that read: refuse a bad bundle here,
    # so a configuration mistake is not reported as malformed media.
    from cryptography import x509  # a dependency of c2pa-python

    try:
        x509.load_pem_x509_certificates(trust_anchors.encode())
    except ValueError as exc:
        raise ValueError(f"trust_anchors is not a PEM bundle of certificates: {exc}") from None
    return {**_READ_SETTINGS, "trust": {"trust_anchors": trust_anchors}}


def _media_type(mime_type: str | None, suffix: str, head: bytes) -> str | None:
    """The caller's type, else the one the magic bytes show, else the suffix's; None when none is known."""
    if mime_type is not None:
        given = mime_type.split(";", 1)[0].strip().lower()
        if given not in _UNKNOWN_TYPES:
            return given
    return _sniff(head) or _SUFFIX_TYPES.get(suffix.lower())


def _sniff(head: bytes) -> str | None:
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    if head.startswith(b"RIFF") and head[8:12] in (b"WEBP", b"AVI "):
        return "image/webp" if head[8:12] == b"WEBP" else "video/x-msvideo"
    if head[4:8] == b"ftyp":
        return _FTYP_BRANDS.get(head[8:12], "video/mp4")
    return None


def _summarize(store: Any) -> Credentials:
    """``Credentials`` from the manifest store JSON c2pa's ``Reader.json`` gives."""
    if not isinstance(store, dict):
        return _malformed("manifest store is not a JSON object")
    manifests = store.get("manifests")
    manifest = manifests.get(store.get("active_manifest")) if isinstance(manifests, dict) else None
    if not isinstance(manifest, dict):
        return _malformed("manifest store has no active manifest")
    failures = _failure_codes(store)
    if not failures and store.get("validation_state") != "Invalid":
        state: CredentialState = "valid"
    elif failures and store.get("validation_state") != "Invalid" and set(failures) <= TRUST_FAILURES:
        state = "untrusted"
    else:
        state = "invalid"
    assertions = [a for a in _as_list(manifest.get("assertions")) if isinstance(a, dict)]
    source_types = _dedupe(_short_type(v) for a in assertions for v in _source_types(a.get("data"), 0))
    source_types = tuple(t for t in source_types if t)[:MAX_SOURCE_TYPES]
    return Credentials(
        state=state,
        signer=_signer(manifest.get("signature_info")),
        claim_generator=_claim_generator(manifest),
        digital_source_types=source_types,
        ai_generated=bool(AI_GENERATED_SOURCE_TYPES.intersection(source_types)),
        ai_edited=_ai_edited(assertions),
        errors=tuple(_clean(code, MAX_ERROR_CHARS) or "?" for code in failures)[:MAX_ERRORS],
    )


def _failure_codes(store: dict[str, Any]) -> list[str]:
    """The active manifest's failure codes: ``validation_results.activeManifest.failure`` and the older
    top-level ``validation_status`` list, which c2pa fills with the same failures."""
    results = store.get("validation_results")
    active = results.get("activeManifest") if isinstance(results, dict) else None
    entries = _as_list(active.get("failure")) if isinstance(active, dict) else []
    entries += _as_list(store.get("validation_status"))
    codes = (entry.get("code") for entry in entries if isinstance(entry, dict))
    return _dedupe(str(code) for code in codes if code is not None)


def _source_types(node: Any, depth: int) -> Iterator[str]:
    """Every string held under a key that names a digital source type, anywhere below ``node``."""
    if depth > _MAX_WALK_DEPTH:
        return
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str) and key.lower().endswith("digitalsourcetype") and isinstance(value, str):
                yield value
            else:
                yield from _source_types(value, depth + 1)
    elif isinstance(node, list):
        for item in node:
            yield from _source_types(item, depth + 1)


def _ai_edited(assertions: list[dict[str, Any]]) -> bool:
    for assertion in assertions:
        label = assertion.get("label")
        data = assertion.get("data")
        if not isinstance(label, str) or label.split("__", 1)[0] not in ACTIONS_LABELS or not isinstance(data, dict):
            continue
        for action in _as_list(data.get("actions")):
            if not isinstance(action, dict) or action.get("action") in NON_EDIT_ACTIONS:
                continue
            if AI_EDIT_SOURCE_TYPES.intersection(_short_type(v) for v in _source_types(action, 0)):
                return True
    return False


def _signer(info: Any) -> str | None:
    if not isinstance(info, dict):
        return None
    for key in ("issuer", "common_name"):
        name = _clean(info.get(key), MAX_NAME_CHARS)
        if name:
            return name
    return None


def _claim_generator(manifest: dict[str, Any]) -> str | None:
    legacy = _clean(manifest.get("claim_generator"), MAX_NAME_CHARS)
    if legacy:
        return legacy
    infos = _as_list(manifest.get("claim_generator_info"))
    info = infos[0] if infos and isinstance(infos[0], dict) else {}
    name, version = _clean(info.get("name"), MAX_NAME_CHARS), _clean(info.get("version"), MAX_NAME_CHARS)
    if not name:
        return None
    return _clean(f"{name}/{version}" if version else name, MAX_NAME_CHARS)


def _short_type(value: str) -> str:
    """``http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture`` -> ``digitalCapture``."""
    return _clean(value.strip().rstrip("/").rsplit("/", 1)[-1].rsplit("#", 1)[-1], MAX_SOURCE_TYPE_CHARS) or ""


def _clean(value: Any, limit: int) -> str | None:
    """A string fit for a JSON column: no control characters or lone surrogates (PostgreSQL refuses NUL)."""
    if not isinstance(value, str):
        return None
    text = "".join(ch for ch in value[: limit * 2] if unicodedata.category(ch) not in ("Cc", "Cs")).strip()
    return text[:limit] or None


def _malformed(message: str) -> Credentials:
    return Credentials("malformed", None, None, (), False, False, (_clean(message, MAX_ERROR_CHARS) or "?",))


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else []


def _dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
