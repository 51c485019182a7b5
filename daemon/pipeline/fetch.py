"""The fetch stage, the one place media is reached, bounded and hashed: ``fetch_job`` turns a stream job's URL
into a local path or downloaded bytes behind the guards below; ``fetch`` (every job, scan and stream) refuses
missing and oversized media, hashes it once and checks the hash the producer declared.

A job's URL is untrusted input, so it may name only what the operator allowed.

``file://`` URLs must lie under one of ``media_roots`` both as written and after every symlink is
resolved (a ``..`` segment is refused outright). ``http(s)://`` URLs must name an allow-listed host
whose addresses are all public (or inside an explicitly allowed network); the connection goes to the
address that was checked, not to a second DNS answer, and every redirect is checked the same way.
Downloads are capped in size while streaming and in total time. Every refusal is a ``MediaError``
(permanent: an error verdict and a dead letter), never a retry.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import os
import socket
import ssl
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

import structlog

from deepsift.daemon.paths import not_regular, path_problem
from deepsift.daemon.pipeline.records import MediaJob
from deepsift.daemon.stream.jobs import JobV1
from deepsift.engines.errors import MediaError
from deepsift.engines.manifest import sha256_file

log = structlog.get_logger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_CHUNK = 1 << 20
_MAX_REDIRECTS = 5


@dataclass(frozen=True)
class MediaRoot:
    """An allowed folder as configured and as resolved (it may itself be a symlink, e.g. to a mount)."""

    written: PurePosixPath
    resolved: Path

    @classmethod
    def of(cls, folder: Path) -> MediaRoot:
        absolute = Path(folder).absolute()
        return cls(PurePosixPath(absolute), absolute.resolve())


@dataclass(frozen=True)
class FetchPolicy:
    """What a job may fetch: allowed folders, hosts and networks, and the size and time caps."""

    media_roots: tuple[MediaRoot, ...] = ()
    allowed_hosts: frozenset[str] = frozenset()
    allowed_networks: tuple[IPNetwork, ...] = ()
    max_bytes: int = 512 << 20  # per download; local files are capped by the pipeline's max_media_bytes
    timeout_s: float = 30.0
    attempts: int = 3  # for timeouts, refused connections and 5xx; then the job fails with fetch_failed

    @classmethod
    def create(
        cls,
        media_roots: Sequence[Path] = (),
        allowed_hosts: Sequence[str] = (),
        allowed_networks: Sequence[str] = (),
        max_bytes: int = 512 << 20,
        timeout_s: float = 30.0,
        attempts: int = 3,
    ) -> FetchPolicy:
        return cls(
            media_roots=tuple(MediaRoot.of(root) for root in media_roots),
            allowed_hosts=frozenset(host.strip().lower().rstrip(".") for host in allowed_hosts),
            allowed_networks=tuple(ipaddress.ip_network(n, strict=False) for n in allowed_networks),
            max_bytes=max_bytes,
            timeout_s=timeout_s,
            attempts=attempts,
        )


# --- file:// ---------------------------------------------------------------------------------------


def local_path(url: str, roots: Sequence[MediaRoot]) -> Path:
    """The regular file a ``file://`` URL names, resolved, if it lies under an allowed root."""
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
        raise MediaError("forbidden_path", "a file URL names a local path only: file:///path")
    raw = unquote(parts.path)
    path = PurePosixPath(raw)
    if "\x00" in raw or not path.is_absolute() or ".." in path.parts:
        raise MediaError("forbidden_path", "the path must be absolute, without '..'")
    if not roots:
        raise MediaError("forbidden_path", "file:// media is disabled: no media_roots are configured")
    if not any(_under(path, root.written) or _under(path, root.resolved) for root in roots):
        raise MediaError("forbidden_path", "the path is outside the media roots")
    try:  # stat first: its errno tells a symlink loop from a missing or unreadable path (as daemon scan does)
        mode = os.stat(raw).st_mode
        resolved = Path(raw).resolve(strict=True)
    except OSError as e:
        problem = path_problem(e, Path(raw))
        raise MediaError(problem.code, problem.detail) from e
    except RuntimeError as e:  # Python < 3.13 reports a symlink loop in resolve() this way
        raise MediaError("symlink_loop", f"cannot read {raw}: symbolic link loop") from e
    if not any(_under(resolved, root.resolved) for root in roots):
        raise MediaError("forbidden_path", "the path leaves the media roots through a symlink")
    if not stat.S_ISREG(mode):  # a FIFO, socket, device or folder: never opened (a FIFO would block)
        problem = not_regular(Path(raw), mode)
        raise MediaError(problem.code, problem.detail)
    return resolved


def _under(path: PurePosixPath | Path, root: PurePosixPath | Path) -> bool:
    return PurePosixPath(path).is_relative_to(PurePosixPath(root))


# --- http(s):// ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    """A URL that passed the guards, and the checked address to connect to."""

    scheme: str
    host: str
    port: int
    address: str
    path: str


def resolve_addresses(host: str, port: int) -> list[str]:
    """Every address the host resolves to (A and AAAA)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise MediaError("fetch_failed", f"cannot resolve {host}: {e}") from e
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def address_allowed(address: str, networks: Sequence[IPNetwork]) -> bool:
    """Public unicast addresses are allowed; private, loopback, link-local and the like only when listed."""
    ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in network for network in networks):
        return True
    return ip.is_global and not ip.is_multicast


def vet_url(url: str, policy: FetchPolicy, resolve: Resolver = resolve_addresses) -> _Target:
    """Check an http(s) URL against the allow-list and the address rules; ``forbidden_url`` otherwise."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise MediaError("forbidden_url", f"only http and https may be fetched, not {scheme!r}")
    if parts.username is not None or parts.password is not None:
        raise MediaError("forbidden_url", "credentials in the URL are not accepted")
    host = (parts.hostname or "").rstrip(".")
    if host not in policy.allowed_hosts:
        raise MediaError("forbidden_url", f"host {host!r} is not in http_allowed_hosts")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as e:
        raise MediaError("forbidden_url", "the URL has an invalid port") from e
    addresses = resolve(host, port)
    refused = [a for a in addresses if not address_allowed(a, policy.allowed_networks)]
    if not addresses or refused:
        raise MediaError("forbidden_url", f"host {host!r} resolves to a private or reserved address")
    path = urlunsplit(("", "", parts.path or "/", parts.query, ""))
    return _Target(scheme, host, port, addresses[0], path)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to the address that was checked, whatever DNS answers next (no rebinding)."""

    def __init__(self, target: _Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._address = target.address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to the checked address; the certificate is still verified against the host name."""

    def __init__(self, target: _Target, timeout: float) -> None:
        self._tls = ssl.create_default_context()
        super().__init__(target.host, target.port, timeout=timeout, context=self._tls)
        self._address = target.address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)


class _Transient(Exception):
    """A failure another attempt may not hit: a timeout, a refused connection, a 5xx."""


def download(url: str, policy: FetchPolicy, resolve: Resolver = resolve_addresses) -> bytes:
    """The body of an allowed http(s) URL, within the size and time caps; a few tries on transient failures."""
    for attempt in range(1, policy.attempts + 1):
        try:
            return _download_once(url, policy, resolve)
        except _Transient as e:
            if attempt >= policy.attempts:
                raise MediaError("fetch_failed", f"{e} (after {attempt} attempts)") from e
            log.warning("fetch_retry", url=redact_url(url), error=str(e), attempt=attempt)
            time.sleep(0.5 * attempt)
    raise MediaError("fetch_failed", "no download attempt was allowed")


def _download_once(url: str, policy: FetchPolicy, resolve: Resolver) -> bytes:
    deadline = time.monotonic() + policy.timeout_s
    for _ in range(_MAX_REDIRECTS + 1):
        target = vet_url(url, policy, resolve)
        connection_type = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
        connection = connection_type(target, timeout=_remaining(deadline))
        try:
            response = _request(connection, target)
            if response.status in _REDIRECTS:
                location = response.getheader("Location")
                if not location:
                    raise MediaError("fetch_failed", f"HTTP {response.status} without a Location")
                url = urljoin(url, location)
                continue
            if response.status in _TRANSIENT_STATUSES:
                raise _Transient(f"HTTP {response.status}")
            if response.status != 200:
                raise MediaError("fetch_failed", f"HTTP {response.status} from {target.host}")
            return _read_capped(connection, response, policy.max_bytes, deadline)
        finally:
            connection.close()
    raise MediaError("forbidden_url", f"more than {_MAX_REDIRECTS} redirects")


def _request(connection: http.client.HTTPConnection, target: _Target) -> http.client.HTTPResponse:
    try:
        connection.request("GET", target.path, headers={"User-Agent": "deepsift", "Accept-Encoding": "identity"})
        return connection.getresponse()
    except ssl.SSLCertVerificationError as e:
        raise MediaError("fetch_failed", f"TLS certificate of {target.host} not accepted: {e.verify_message}") from e
    except (OSError, http.client.HTTPException) as e:
        raise _Transient(f"{type(e).__name__}: {e}") from e


def _read_capped(
    connection: http.client.HTTPConnection, response: http.client.HTTPResponse, max_bytes: int, deadline: float
) -> bytes:
    declared = response.getheader("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise MediaError("too_large", f"{declared} bytes > limit {max_bytes}")
    body, size = [], 0
    try:
        while True:
            if connection.sock is not None:
                connection.sock.settimeout(_remaining(deadline))
            chunk = response.read(_CHUNK)
            if not chunk:
                return b"".join(body)
            size += len(chunk)
            if size > max_bytes:
                raise MediaError("too_large", f"more than {max_bytes} bytes")
            body.append(chunk)
    except (OSError, http.client.HTTPException) as e:
        raise _Transient(f"download interrupted: {type(e).__name__}: {e}") from e


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _Transient("timed out")
    return left


def redact_url(url: str) -> str:
    """The URL without credentials, query or fragment (pre-signed URLs carry secrets there)."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        return url
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


# --- a job's media ---------------------------------------------------------------------------------


def fetch_job(job: JobV1, policy: FetchPolicy, resolve: Resolver = resolve_addresses) -> MediaJob:
    """Where a stream job's media is: a checked local path, or bytes downloaded within the limits; ``fetch`` then
    bounds and hashes it and checks the job's ``content_sha256``."""
    uri = redact_url(job.media_url)
    common = dict(source="kafka", expected_sha256=job.content_sha256, metadata=dict(job.metadata))
    if urlsplit(job.media_url).scheme.lower() == "file":
        return MediaJob(job.job_id, uri, path=local_path(job.media_url, policy.media_roots), **common)  # type: ignore[arg-type]
    return MediaJob(job.job_id, uri, data=download(job.media_url, policy, resolve), **common)  # type: ignore[arg-type]


def fetch(job: MediaJob, max_bytes: int) -> tuple[Path | bytes, str]:
    """The media (a path, or bytes in memory) and its sha256; missing, oversized and mis-hashed media are
    permanent errors. The size is checked before anything is read."""
    if job.data is not None:
        if len(job.data) > max_bytes:
            raise MediaError("too_large", f"{len(job.data)} bytes > limit {max_bytes}")
        media: Path | bytes = job.data
        sha = job.known_sha256 or hashlib.sha256(job.data).hexdigest()
    else:
        if job.path is None or not job.path.is_file():
            raise MediaError("not_found", f"no such file: {job.path}")
        size = os.path.getsize(job.path)
        if size > max_bytes:
            raise MediaError("too_large", f"{size} bytes > limit {max_bytes}")
        media, sha = job.path, job.known_sha256 or sha256_file(job.path)
    if job.expected_sha256 is not None and job.expected_sha256 != sha:
        raise MediaError("hash_mismatch", f"content sha256 is {sha}, the job says {job.expected_sha256}")
    return media, sha
