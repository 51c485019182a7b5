"""Report pages from the verdict store: one verdict's page by id or job id (``daemon report``), a whole scan's
pages and index (``daemon scan --report DIR``), and the read-only ``/verdicts`` pages of the daemon's HTTP port."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from deepsift.daemon.records import VerdictRecord
from deepsift.daemon.report.evidence import Evidence, gather
from deepsift.daemon.report.media import MediaAccess
from deepsift.daemon.report.render import IndexEntry, render_index, render_verdict
from deepsift.daemon.repository import VerdictRepository
from deepsift.engines.errors import DeepsiftError


class VerdictNotFound(DeepsiftError):
    """No stored verdict has the id, or the job has none."""


@dataclass(frozen=True)
class ReportSource:
    """Where pages read from: the verdict store, and which media they may re-read."""

    repository: VerdictRepository
    access: MediaAccess

    def evidence(self, verdict_id: int) -> Evidence:
        try:
            record = self.repository.get(verdict_id)
        except KeyError:
            raise VerdictNotFound(f"no verdict with id {verdict_id}") from None
        return self.evidence_of(record, verdict_id)

    def evidence_of(self, record: VerdictRecord, verdict_id: int | None) -> Evidence:
        manifest = self.repository.engine_manifest(record.engine)
        evidence = gather(record, verdict_id, manifest, self.access)
        others = tuple(i for i in self.repository.ids_for_job(record.job_id) if i != verdict_id)
        return replace(evidence, other_verdict_ids=others)

    def newest_for_job(self, job_id: str) -> int:
        """The id of the job's newest verdict (any engine)."""
        ids = self.repository.ids_for_job(job_id)
        if not ids:
            raise VerdictNotFound(f"no verdict for job {job_id!r}")
        return ids[0]

    def verdict_page(self, verdict_id: int) -> str:
        return render_verdict(self.evidence(verdict_id))

    def job_page(self, job_id: str, verdict_href: str = "{}") -> str:
        """An index of every verdict of one job (one per engine and re-scoring), newest first."""
        ids = self.repository.ids_for_job(job_id)
        if not ids:
            raise VerdictNotFound(f"no verdict for job {job_id!r}")
        entries = [IndexEntry(i, self.repository.get(i), verdict_href.format(i), None) for i in ids]
        return render_index(entries, f"Verdicts of job {job_id}")


def write_page(path: Path, html: str) -> Path:
    """Write a page atomically (a reader never sees half a page); folders are created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        partial.write_text(html, encoding="utf-8")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def page_name(verdict_id: int | None, position: int) -> str:
    return f"verdict-{verdict_id}.html" if verdict_id is not None else f"unstored-{position}.html"


def write_scan_report(
    directory: Path, results: Iterable[tuple[int | None, VerdictRecord]], source: ReportSource, title: str
) -> Path:
    """A page per verdict and ``index.html`` over them; returns the index. Unstored verdicts get pages too."""
    entries: list[IndexEntry] = []
    for position, (verdict_id, record) in enumerate(results):
        evidence = source.evidence_of(record, verdict_id)
        name = page_name(verdict_id, position)
        write_page(directory / name, render_verdict(evidence, index_href="index.html"))
        entries.append(IndexEntry(verdict_id, record, name, evidence.thumbnail_uri))
    return write_page(directory / "index.html", render_index(entries, title))


def scan_title(paths: Sequence[Path]) -> str:
    named = ", ".join(str(p) for p in paths[:3])
    return f"deepsift scan of {named}{' …' if len(paths) > 3 else ''}"
