"""The verdict table ``daemon scan`` prints: one row per file as soon as its verdict is stored, and a footer that
counts verdicts by status, paths that could not be read as files by code, and verdicts that could not be stored.

No cell is ever cut: the label column is as wide as the engine's longest label (class names such as ``synthetic``
or ``face_reenactment``, ``uncertain``), and a value wider than its column (a long file name) pushes the rest of
its row to the right, two spaces on, so ``row.split()`` still reads every field whole."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TextIO

from deepsift.daemon.scan import ScanResult
from deepsift.engines.manifest import EngineManifest

# label: at least wide enough for "uncertain" (the band's label) and "synthetic"; wider for longer class names
_COLUMNS = (("file", 28), ("type", 5), ("status", 9), ("label", 9), ("p_fake", 6), ("frames", 6), ("code", 15))
_LABEL = 3  # the label column's index


@dataclass
class VerdictTable:
    out: TextIO
    widths: tuple[int, ...] = tuple(w for _, w in _COLUMNS)

    def _line(self, values: list[str]) -> None:
        cells = [v.ljust(w) for v, w in zip(values, self.widths, strict=True)]  # never v[:w]: no label is cut
        print("  ".join(cells).rstrip(), file=self.out, flush=True)

    def header(self, manifest: EngineManifest) -> None:
        labels = (*manifest.task.class_names, "fake", "real", "uncertain")
        widths = list(self.widths)
        widths[_LABEL] = max(widths[_LABEL], *map(len, labels))
        self.widths = tuple(widths)
        band = manifest.uncertain_band
        uncertain = "" if band is None else f", uncertain {band.low:.3f} <= p_fake < {band.high:.3f}"
        print(
            f"engine {manifest.name} v{manifest.version} ({manifest.recipe}, {manifest.input.crop_mode} mode, "
            f"threshold {manifest.threshold:.3f}{uncertain})",
            file=self.out,
        )
        self._line([name for name, _ in _COLUMNS])

    def row(self, result: ScanResult) -> ScanResult:
        v = result.verdict
        name = result.path.name if result.path else v.media_uri
        p = "" if v.p_fake is None else f"{v.p_fake:.3f}"
        frames = "" if v.frames_sampled is None else str(v.frames_sampled)
        code = (v.code or "") + _stored_note(result)
        self._line([name, v.media_type or "", v.status, v.label or "", p, frames, code])
        return result

    def footer(self, results: list[ScanResult]) -> None:
        counts = Counter(r.verdict.status for r in results)
        summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no media found"
        print(f"{len(results)} files: {summary}", file=self.out)
        unread = Counter(r.verdict.code for r in results if r.path_problem)
        if unread:
            by_code = ", ".join(f"{n} {code}" for code, n in sorted(unread.items()))
            print(f"{_count(unread.total(), 'path')} could not be read as files: {by_code}", file=self.out)
        refused = [r for r in results if r.store_error]
        if refused:
            lost = sum(r.verdict_id is None for r in refused)
            print(
                f"{_count(len(refused), 'verdict')} could not be stored: {len(refused) - lost} stored as store_failed, "
                f"{lost} not stored at all (see the log)",
                file=self.out,
            )


def _stored_note(result: ScanResult) -> str:
    if result.verdict_id is None:
        return " (not stored)"
    return "" if result.created else " (stored before)"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
