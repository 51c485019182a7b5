"""The fetch guards: a job's URL may name only allowed folders and hosts, and never a private address.

HTTP cases run against a server on 127.0.0.1 in this process. Host names are resolved by a fake
resolver (``media.test`` → 127.0.0.1, ``internal.test`` → 10.1.2.3), so nothing beyond this machine is
ever looked up or contacted; 127.0.0.1/32 is the test-only allowed network.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from deepsift.daemon.pipeline.fetch import (
    FetchPolicy,
    address_allowed,
    download,
    fetch,
    fetch_job,
    local_path,
    redact_url,
    resolve_addresses,
    vet_url,
)
from deepsift.daemon.stream.jobs import new_job
from deepsift.engines.errors import MediaError

BODY = bytes(range(256)) * 4  # 1 KiB

MAX_BYTES = 10**8


# --- file:// -----------------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """root/ (allowed) with a file, links inside and out; outside/ with a secret; rootlink → root."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "a.png").write_bytes(b"a")
    (outside / "secret.png").write_bytes(b"secret")
    (root / "escape.png").symlink_to(outside / "secret.png")
    (root / "escape_dir").symlink_to(outside)
    (root / "alias.png").symlink_to(root / "a.png")
    (tmp_path / "rootlink").symlink_to(root)
    return {"root": root, "outside": outside, "rootlink": tmp_path / "rootlink"}


def _refused(url: str, roots: list[Path], code: str) -> None:
    with pytest.raises(MediaError) as refused:
        local_path(url, FetchPolicy.create(media_roots=roots).media_roots)
    assert refused.value.code == code, refused.value.detail


def test_a_file_under_a_root_is_allowed_also_through_links_that_stay_inside(tree):
    roots = FetchPolicy.create(media_roots=[tree["root"]]).media_roots
    assert local_path((tree["root"] / "a.png").as_uri(), roots) == (tree["root"] / "a.png").resolve()
    assert local_path((tree["root"] / "alias.png").as_uri(), roots) == (tree["root"] / "a.png").resolve()
    # a root that is itself a symlink (a mount) works by either name
    linked = FetchPolicy.create(media_roots=[tree["rootlink"]]).media_roots
    assert local_path((tree["rootlink"] / "a.png").as_uri(), linked).read_bytes() == b"a"
    assert local_path((tree["root"] / "a.png").as_uri(), linked).read_bytes() == b"a"


@pytest.mark.parametrize(
    "suffix", ["/../outside/secret.png", "/%2E%2E/outside/secret.png", "/x/../../outside/secret.png"]
)
def test_dot_dot_traversal_is_refused(tree, suffix):
    _refused(tree["root"].as_uri() + suffix, [tree["root"]], "forbidden_path")


@pytest.mark.parametrize("name", ["escape.png", "escape_dir/secret.png"])
def test_symlink_escapes_are_refused(tree, name):
    _refused((tree["root"] / name).as_uri(), [tree["root"]], "forbidden_path")


def test_paths_outside_the_roots_are_refused_without_saying_whether_they_exist(tree):
    _refused((tree["outside"] / "secret.png").as_uri(), [tree["root"]], "forbidden_path")
    _refused((tree["outside"] / "no-such.png").as_uri(), [tree["root"]], "forbidden_path")
    _refused("file:///etc/passwd", [tree["root"]], "forbidden_path")


def test_other_file_url_shapes_are_refused(tree):
    a = tree["root"] / "a.png"
    _refused(f"file://otherhost{a}", [tree["root"]], "forbidden_path")
    _refused(a.as_uri() + "?x=1", [tree["root"]], "forbidden_path")
    _refused(a.as_uri(), [], "forbidden_path")  # no roots configured: file:// is off
    _refused((tree["root"] / "missing.png").as_uri(), [tree["root"]], "not_found")
    _refused(tree["root"].as_uri(), [tree["root"]], "not_regular_file")  # a folder is not media


def test_a_fetched_job_is_hashed_once_and_its_declared_hash_verified(tree):
    policy = FetchPolicy.create(media_roots=[tree["root"]])
    url = (tree["root"] / "a.png").as_uri()
    media = fetch_job(new_job("j", url, content_sha256=hashlib.sha256(b"a").hexdigest()), policy)
    assert media.path == (tree["root"] / "a.png").resolve()
    assert fetch(media, MAX_BYTES) == (media.path, hashlib.sha256(b"a").hexdigest())
    with pytest.raises(MediaError) as refused:
        fetch(fetch_job(new_job("j", url, content_sha256="0" * 64), policy), MAX_BYTES)
    assert refused.value.code == "hash_mismatch"


# --- http(s):// ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address, allowed",
    [
        ("93.184.216.34", True),
        ("2606:2800:220:1:248:1893:25c8:1946", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fe80::1%eth0", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),
    ],
)
def test_only_public_unicast_addresses_are_allowed_by_default(address, allowed):
    assert address_allowed(address, ()) is allowed


def test_listed_networks_are_allowed_explicitly():
    policy = FetchPolicy.create(allowed_networks=["10.0.0.0/8"])
    assert address_allowed("10.1.2.3", policy.allowed_networks)
    assert not address_allowed("10.1.2.3", FetchPolicy.create(allowed_networks=["127.0.0.1/32"]).allowed_networks)


class _Server:
    def __init__(self) -> None:
        self.requests: list[str] = []
        self.port = 0


@pytest.fixture
def server() -> Iterator[_Server]:
    state = _Server()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            path = self.path.split("?", 1)[0]
            routes = {
                "/ok.bin": lambda: self._body(BODY),
                "/big-declared": lambda: self._body(b"x", declared=10_000),
                "/big-streamed": lambda: self._body(b"x" * 20_000, declared=None),
                "/redirect-relative": lambda: self._redirect("/ok.bin"),
                "/redirect-private": lambda: self._redirect(f"http://internal.test:{state.port}/ok.bin"),
                "/redirect-metadata": lambda: self._redirect("http://169.254.169.254/latest/meta-data/"),
                "/redirect-unlisted": lambda: self._redirect(f"http://elsewhere.test:{state.port}/ok.bin"),
                "/redirect-loop": lambda: self._redirect("/redirect-loop"),
                "/slow": lambda: (time.sleep(3), self._body(BODY)),
                "/unavailable": lambda: self._status(503),
            }
            routes.get(path, lambda: self._status(404))()

        def _body(self, data: bytes, declared: int | str | None = "exact") -> None:
            self.send_response(200)
            if declared is not None:
                self.send_header("Content-Length", str(len(data) if declared == "exact" else declared))
            self.end_headers()
            self.wfile.write(data)

        def _redirect(self, location: str) -> None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _status(self, code: int) -> None:
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


NAMES = {"media.test": ["127.0.0.1"], "internal.test": ["10.1.2.3"], "dual.test": ["127.0.0.1", "192.168.7.7"]}


def _resolve(host: str, port: int) -> list[str]:
    """Test names from the table; IP literals as the real resolver gives them (no lookup)."""
    if host in NAMES:
        return NAMES[host]
    if host.replace(".", "").isdigit():
        return resolve_addresses(host, port)
    raise MediaError("fetch_failed", f"cannot resolve {host}")


POLICY = FetchPolicy.create(
    allowed_hosts=["media.test", "internal.test", "dual.test", "169.254.169.254"],
    allowed_networks=["127.0.0.1/32"],  # the test-only allowance for the loopback server
    max_bytes=5_000,
    timeout_s=1.0,
    attempts=1,
)


def _fetch(server: _Server, path: str, host: str = "media.test", policy: FetchPolicy = POLICY) -> bytes:
    return download(f"http://{host}:{server.port}{path}", policy, _resolve)


def _fetch_refused(server: _Server, path: str, code: str, **kw: object) -> MediaError:
    with pytest.raises(MediaError) as refused:
        _fetch(server, path, **kw)
    assert refused.value.code == code, refused.value.detail
    return refused.value


def test_an_allowed_host_is_downloaded_and_relative_redirects_are_followed(server):
    assert _fetch(server, "/ok.bin") == BODY
    assert _fetch(server, "/redirect-relative") == BODY
    assert server.requests == ["/ok.bin", "/redirect-relative", "/ok.bin"]


def test_a_redirect_to_a_private_address_is_refused_before_connecting(server):
    _fetch_refused(server, "/redirect-private", "forbidden_url")
    _fetch_refused(server, "/redirect-metadata", "forbidden_url")
    # only the redirecting requests reached the (only) server; the targets were never contacted
    assert server.requests == ["/redirect-private", "/redirect-metadata"]


def test_hosts_off_the_list_and_hosts_with_any_private_address_are_refused(server):
    _fetch_refused(server, "/redirect-unlisted", "forbidden_url")
    _fetch_refused(server, "/ok.bin", "forbidden_url", host="dual.test")  # one of its addresses is private
    _fetch_refused(server, "/ok.bin", "forbidden_url", host="127.0.0.1")  # not on the host list
    public_only = FetchPolicy.create(allowed_hosts=["media.test"], max_bytes=5_000, attempts=1)
    _fetch_refused(server, "/ok.bin", "forbidden_url", policy=public_only)  # loopback without the allowance
    assert server.requests == ["/redirect-unlisted"]


def test_other_url_shapes_are_refused():
    for url in ("ftp://media.test/a", "http://user:pw@media.test/a", "http://media.test:99999/a"):
        with pytest.raises(MediaError) as refused:
            vet_url(url, POLICY, _resolve)
        assert refused.value.code == "forbidden_url", url


def test_the_size_cap_holds_whether_or_not_the_server_declares_the_size(server):
    _fetch_refused(server, "/big-declared", "too_large")
    _fetch_refused(server, "/big-streamed", "too_large")


def test_slow_servers_time_out_and_errors_fail_the_job(server):
    started = time.monotonic()
    _fetch_refused(server, "/slow", "fetch_failed")
    assert time.monotonic() - started < 2.5
    _fetch_refused(server, "/missing", "fetch_failed")
    _fetch_refused(server, "/unavailable", "fetch_failed")
    _fetch_refused(server, "/redirect-loop", "forbidden_url")


def test_downloaded_media_is_hash_checked_and_its_url_redacted(server):
    url = f"http://media.test:{server.port}/ok.bin?X-Signature=secret"
    media = fetch_job(new_job("j", url, content_sha256=hashlib.sha256(BODY).hexdigest()), POLICY, _resolve)
    assert media.data == BODY and media.path is None
    assert fetch(media, MAX_BYTES) == (BODY, hashlib.sha256(BODY).hexdigest())
    assert media.uri == f"http://media.test:{server.port}/ok.bin"  # pre-signed secrets stay out of SQL and logs
    with pytest.raises(MediaError) as refused:
        fetch(fetch_job(new_job("j", url, content_sha256="0" * 64), POLICY, _resolve), MAX_BYTES)
    assert refused.value.code == "hash_mismatch"
    assert redact_url("https://u:p@cdn.example:8443/a/b.mp4?sig=1#x") == "https://cdn.example:8443/a/b.mp4"
