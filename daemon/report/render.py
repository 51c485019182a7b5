"""HTML from the report's data with Jinja2 templates (``report/templates``), autoescaped: job metadata, file names
and error details are uploader-controlled text, and a page must never run what they carry. Pages hold their
pictures as ``data:`` URIs and their style and script inline, so one file is the whole page."""

from __future__ import annotations

import json
import posixpath
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from urllib.parse import unquote, urlsplit

from jinja2 import Environment, PackageLoader, StrictUndefined

from deepsift.daemon.records import VerdictRecord
from deepsift.daemon.report.evidence import Evidence


@dataclass(frozen=True)
class IndexEntry:
    """One row of an index page: a verdict, the link to its page, its thumbnail."""

    verdict_id: int | None
    record: VerdictRecord
    href: str | None
    thumbnail_uri: str | None

    @property
    def name(self) -> str:
        return media_name(self.record.media_uri)

    @property
    def label(self) -> str:
        return (self.record.label or "ok") if self.record.status == "ok" else self.record.status

    @property
    def p_fake(self) -> float | None:
        return self.record.p_fake

    @property
    def code(self) -> str | None:
        return self.record.code

    @property
    def faces(self) -> int:
        return sum(1 for f in self.record.frames if f.box is not None)

    @property
    def engine(self) -> str:
        return f"{self.record.engine.name} v{self.record.engine.version}"


def media_name(uri: str) -> str:
    """The file name of a media URI, for people (``/a/b/clip.mp4`` → ``clip.mp4``)."""
    path = unquote(urlsplit(uri).path) or uri
    return posixpath.basename(path.rstrip("/")) or uri


def _figure(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _pretty_json(value: object) -> str:
    """JSON for people (the page escapes it as text, unlike Jinja's ``tojson``, which is made for scripts)."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def _bytes_text(size: int | None) -> str:
    if size is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    return f"{size} B"


@cache
def _environment() -> Environment:
    environment = Environment(
        loader=PackageLoader("deepsift.daemon.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(basename=media_name, figure=_figure, bytes_text=_bytes_text, pretty_json=_pretty_json)
    return environment


def _common() -> dict[str, object]:
    try:
        deepsift_version = version("deepsift")
    except PackageNotFoundError:  # a source tree that was never installed
        deepsift_version = "(source)"
    return {"deepsift_version": deepsift_version, "rendered_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")}


def render_verdict(
    evidence: Evidence,
    verdict_href: Callable[[int], str] = "verdict-{}.html".format,
    index_href: str | None = None,
) -> str:
    """The verdict page; ``verdict_href`` links other verdicts of the job, ``index_href`` the scan's index."""
    template = _environment().get_template("verdict.html.j2")
    return template.render(
        ev=evidence, band=evidence.band, verdict_href=verdict_href, index_href=index_href, **_common()
    )


def render_index(entries: Sequence[IndexEntry], title: str) -> str:
    """A sortable table of verdicts with thumbnails, linking each verdict's page."""
    counts = sorted(Counter(e.label for e in entries).items())
    template = _environment().get_template("index.html.j2")
    return template.render(entries=entries, title=title, counts=counts, **_common())
