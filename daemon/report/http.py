"""The read-only verdict pages ``daemon run`` serves on its health port when ``report_http`` is on (off by
default: the pages show uploaded media and job metadata, so whoever reaches the port sees them).

``GET /verdicts/<id>`` is one verdict's page; ``GET /verdicts?job_id=<id>`` lists the job's verdicts, each linked.
An unknown id is 404, a database outage 503. At most ``max_renders`` pages are rendered at once (each decodes
frames); more get 503 with ``Retry-After`` rather than a queue that grows."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import structlog
from markupsafe import escape

from deepsift.daemon.report.pages import ReportSource, VerdictNotFound
from deepsift.engines.errors import RetryableError

log = structlog.get_logger(__name__)

HTML = "text/html; charset=utf-8"
PAGE_HEADERS = {
    # Pictures are data: URIs and style and script are inline: nothing else may load or run.
    "Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    "script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True)
class Page:
    status: int
    body: bytes
    content_type: str = HTML
    headers: tuple[tuple[str, str], ...] = tuple(PAGE_HEADERS.items())


def _message(status: int, text: str) -> Page:
    body = f"<!DOCTYPE html><title>{status}</title><p>{escape(text)}</p>".encode()
    return Page(status, body)


class VerdictPages:
    """Answers ``/verdicts`` requests from a ``ReportSource``; ``respond`` is None for any other path."""

    def __init__(self, source: ReportSource, max_renders: int = 2) -> None:
        self._source = source
        self._slots = threading.BoundedSemaphore(max_renders)

    @staticmethod
    def handles(path: str) -> bool:
        route = urlsplit(path).path
        return route == "/verdicts" or route.startswith("/verdicts/")

    def respond(self, path: str) -> Page:
        if not self._slots.acquire(blocking=False):
            page = _message(503, "busy rendering other verdict pages; try again shortly")
            return Page(page.status, page.body, headers=(*page.headers, ("Retry-After", "2")))
        try:
            return self._render(path)
        except VerdictNotFound as e:
            return _message(404, str(e))
        except RetryableError as e:
            return _message(503, f"the verdict store cannot be reached: {e}")
        except Exception:
            log.exception("verdict_page_failed", path=path)
            return _message(500, "the page could not be rendered; the daemon's log says why")
        finally:
            self._slots.release()

    def _render(self, path: str) -> Page:
        parts = urlsplit(path)
        if parts.path.startswith("/verdicts/"):
            ident = parts.path.removeprefix("/verdicts/")
            if not ident.isascii() or not ident.isdigit() or len(ident) > 18:
                return _message(404, f"{ident!r} is not a verdict id")
            return Page(200, self._source.verdict_page(int(ident)).encode())
        job_ids = parse_qs(parts.query).get("job_id", [])
        if len(job_ids) != 1:
            return _message(400, "give one job: /verdicts?job_id=<job id>, or a verdict: /verdicts/<id>")
        html = self._source.job_page(job_ids[0], verdict_href="/verdicts/{}")
        return Page(200, html.encode())
