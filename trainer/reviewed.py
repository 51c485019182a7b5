"""``trainer export-reviews``: reviewed verdicts in SQL → a dataset manifest of the media that was judged.

Each job's reviewed truth is its newest review (``latest_verdicts.review_id``, beside the job's newest serving
verdict, which names the media). Media is kept only when it can be read here and is still the media that was
judged: a local path or ``file://`` URI whose sha256 is the verdict's. ``http(s)`` media is never downloaded;
missing, unreadable and changed files are reported with their reason and left out. One row per content: jobs of
the same bytes (re-uploads) become one row labelled by the newest review among them, read from any copy that is
still intact.

Splits are grouped by content: a media's split is decided by a keyed hash of its sha256 (``seed`` is the key),
so every crop ``trainer prepare`` cuts from it lands in the same split, and a media keeps its split when the
export is run again after more reviews arrive — a test item never drifts into training.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from deepsift.engines.errors import DeepsiftError
from deepsift.engines.manifest import sha256_file
from deepsift.trainer.data import ManifestRow, Split, write_manifest
from deepsift.trainer.verdictdb import read_verdict_store

# The newest review of each job, with the media of the job's newest serving verdict.
REVIEWED_MEDIA_SQL = """
SELECT review_id, job_id, id AS verdict_id, media_uri, media_sha256, media_type,
       reviewed_label AS label, reviewed_manipulation AS manipulation
FROM latest_verdicts WHERE review_id IS NOT NULL ORDER BY review_id
"""


@dataclass(frozen=True)
class ReviewedMedia:
    """A job's newest review and the media its serving verdict judged."""

    review_id: int
    job_id: str
    verdict_id: int
    media_uri: str
    media_sha256: str | None
    media_type: str | None
    label: str  # real | fake
    manipulation: str | None


@dataclass(frozen=True)
class Skipped:
    """Reviewed content left out of the manifest; ``reason`` is one of the codes below, ``detail`` says more."""

    review_id: int
    job_id: str
    media_uri: str
    reason: str  # remote_media | not_local | missing | unreadable | changed | no_sha256
    detail: str


@dataclass(frozen=True)
class Exported:
    """A manifest row and where it came from (written beside the manifest)."""

    row: ManifestRow
    media_sha256: str
    review_id: int
    job_id: str
    verdict_id: int
    superseded_reviews: int  # older reviews of the same content in other jobs


@dataclass(frozen=True)
class ExportSummary:
    manifest: Path
    provenance: Path
    reviewed_jobs: int
    exported: tuple[Exported, ...]
    skipped: tuple[Skipped, ...]
    superseded: int  # reviews of content that a newer review of other jobs decides
    conflicting: int  # contents whose reviews disagree on the label (the newest one wins)

    def counts(self) -> dict[str, dict[str, int]]:
        """Rows per split and label."""
        found = Counter((e.row.split, e.row.label) for e in self.exported)
        return {s: {lab: found[s, lab] for lab in ("real", "fake")} for s in ("train", "val", "test")}


def read_reviewed_media(url: str) -> list[ReviewedMedia]:
    """Every reviewed job's newest review and media, oldest review first."""
    from sqlalchemy import text

    with read_verdict_store(url) as connection:
        rows = connection.execute(text(REVIEWED_MEDIA_SQL)).mappings().all()
    return [ReviewedMedia(**dict(row)) for row in rows]


def split_of(media_sha256: str, seed: int, val_fraction: float, test_fraction: float) -> Split:
    """The content's split from a keyed hash of its sha256: stable across exports, uniform over contents."""
    digest = hashlib.sha256(f"{seed}:{media_sha256}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < test_fraction:
        return "test"
    return "val" if u < test_fraction + val_fraction else "train"


def local_copy(item: ReviewedMedia) -> tuple[Path | None, tuple[str, str] | None]:
    """The readable, unchanged local file of ``item``, or (None, (reason, detail))."""
    parts = urlsplit(item.media_uri)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        return None, ("remote_media", "http(s) media is not downloaded")
    if scheme not in ("", "file"):
        return None, ("not_local", f"{scheme}:// names no local file")
    path = Path(unquote(parts.path) if scheme == "file" else item.media_uri)
    if not path.is_file():
        return None, ("missing", f"no file at {path}")
    try:
        digest = sha256_file(path)
    except OSError as e:
        return None, ("unreadable", f"{path}: {e.strerror or e}")
    if digest != item.media_sha256:
        judged = item.media_sha256 or ""
        return None, ("changed", f"{path} changed since it was judged (sha256 {digest[:12]}…, was {judged[:12]}…)")
    return path, None


def _skip(item: ReviewedMedia, reason: str, detail: str) -> Skipped:
    return Skipped(item.review_id, item.job_id, item.media_uri, reason, detail)


def _by_content(items: Sequence[ReviewedMedia]) -> tuple[dict[str, list[ReviewedMedia]], list[Skipped]]:
    """Reviews grouped by media sha256, newest first; reviews of media with no recorded sha256 are skipped."""
    groups: dict[str, list[ReviewedMedia]] = {}
    skipped = []
    for item in sorted(items, key=lambda i: i.review_id, reverse=True):
        if item.media_sha256 is None:
            skipped.append(_skip(item, "no_sha256", "the verdict records no media hash (the media was never read)"))
        else:
            groups.setdefault(item.media_sha256, []).append(item)
    return groups, skipped


def _export_content(copies: list[ReviewedMedia], split: Split) -> Exported | Skipped:
    """One row for one content: the newest review's label, the path of the first intact copy (newest first)."""
    newest, problems = copies[0], []
    for copy in copies:
        path, problem = local_copy(copy)
        if problem is not None:
            problems.append(problem)
            continue
        manipulation = (newest.manipulation or "") if newest.label == "fake" else ""
        row = ManifestRow(path=str(path.resolve()), label=newest.label, split=split, manipulation=manipulation,
                          video_id=copy.media_sha256)  # fmt: skip
        return Exported(row, copy.media_sha256, newest.review_id, newest.job_id, copy.verdict_id, len(copies) - 1)
    reason, detail = problems[0]
    if len(copies) > 1:
        detail += f" (and none of its {len(copies) - 1} other copies is usable)"
    return _skip(newest, reason, detail)


def export_reviews(
    url: str,
    out: Path,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    log: Callable[[str], None] = print,
) -> ExportSummary:
    """Write the manifest of reviewed, still intact media to ``out`` and its provenance beside it."""
    if min(val_fraction, test_fraction) < 0 or val_fraction + test_fraction >= 1:
        raise DeepsiftError(f"split fractions must leave room for training: val {val_fraction}, test {test_fraction}")
    items = read_reviewed_media(url)
    groups, skipped = _by_content(items)
    exported = []
    for sha, copies in groups.items():
        outcome = _export_content(copies, split_of(sha, seed, val_fraction, test_fraction))
        (exported if isinstance(outcome, Exported) else skipped).append(outcome)
    for skip in skipped:
        log(f"skipped job {skip.job_id} (review {skip.review_id}, {skip.media_uri}): {skip.reason}: {skip.detail}")
    if not exported:
        raise DeepsiftError(f"no reviewed media to export: {len(items)} reviewed jobs, {len(skipped)} skipped")
    exported.sort(key=lambda e: e.review_id)
    conflicting = sum(len({c.label for c in copies}) > 1 for copies in groups.values())
    manifest = write_manifest([e.row for e in exported], out)
    provenance = manifest.with_name(f"{manifest.stem}.provenance.json")
    summary = ExportSummary(
        manifest, provenance, len(items), tuple(exported), tuple(skipped),
        superseded=sum(e.superseded_reviews for e in exported), conflicting=conflicting,
    )  # fmt: skip
    _write_provenance(summary, seed, val_fraction, test_fraction)
    return summary


def _write_provenance(summary: ExportSummary, seed: int, val_fraction: float, test_fraction: float) -> None:
    record = {
        "seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction,
        "reviewed_jobs": summary.reviewed_jobs, "counts": summary.counts(),
        "superseded_reviews": summary.superseded, "conflicting_contents": summary.conflicting,
        "rows": [{**asdict(e), "row": e.row.model_dump()} for e in summary.exported],
        "skipped": [asdict(s) for s in summary.skipped],
    }  # fmt: skip
    summary.provenance.write_text(json.dumps(record, indent=1) + "\n")
