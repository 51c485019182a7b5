"""The papers' datasets in their own layouts → the trainer's dataset manifest (``trainer import-dataset``).

One module per layout, each registered in ``IMPORTERS`` by name: ``ffpp`` (FaceForensics++ with its split files),
``dfdc`` (part folders with ``metadata.json``), ``celebdf`` (Celeb-DF v2 and its test list), ``cifake``,
``folders`` (class folders with masks) and ``sid_set`` (SID_Set's parquet shards, whose embedded images and masks
are extracted beside the manifest). Splits are dealt by ``trainer.datasets.split``, whole groups at a time.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from deepsift.trainer.datasets import celebdf, dfdc, ffpp, folders, sid_set  # noqa: F401  (they fill IMPORTERS)
from deepsift.trainer.datasets.common import IMPORTERS, DatasetLayoutError, ImportOptions, Item, Split, to_rows
from deepsift.trainer.datasets.split import OFFICIAL, SplitSpec, assign_splits, groups_across_splits

__all__ = [
    "IMPORTERS",
    "OFFICIAL",
    "DatasetLayoutError",
    "ImportOptions",
    "ImportSummary",
    "SplitSpec",
    "import_dataset",
]


@dataclass(frozen=True)
class ImportSummary:
    manifest: Path
    kind: str
    protocol: str  # how the splits were decided, in words
    counts: dict[str, dict[str, int]]  # split → label or manipulation → items
    groups: int
    groups_across_splits: int  # > 0 only where the dataset's own split puts one group in several splits


def _counts(items: list[Item], splits: list[Split]) -> dict[str, dict[str, int]]:
    found = Counter((s, i.manipulation or i.label) for i, s in zip(items, splits, strict=True))
    return {s: {k: n for (split, k), n in sorted(found.items()) if split == s} for s in ("train", "val", "test")}


def import_dataset(
    kind: str, root: Path, out: Path, seed: int = 0, split: SplitSpec | str | None = None,
    options: ImportOptions | None = None,
) -> ImportSummary:  # fmt: skip
    """Read the dataset at ``root`` in the ``kind`` layout, deal its splits and write the manifest ``out``; a dataset
    that embeds its media has them extracted to ``options.media_dir`` (default: ``<out stem>-media`` beside ``out``)."""
    from deepsift.trainer.data import write_manifest

    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"{root}: no such dataset folder")
    try:
        importer = IMPORTERS.get(kind)
    except KeyError as e:
        raise DatasetLayoutError(str(e.args[0])) from e
    options = options or ImportOptions()
    if options.media_dir is None:  # beside the manifest, so the rows' relative paths stay short and portable
        options = replace(options, media_dir=Path(out).parent / f"{Path(out).stem}-media")
    items = importer(root, options)
    if not items:
        raise DatasetLayoutError(f"{root}: no media found in the {kind} layout")
    splits, protocol = assign_splits(items, split, seed)
    manifest = write_manifest(to_rows(items, splits, root, Path(out).parent), out)
    return ImportSummary(
        manifest, kind, protocol, _counts(items, splits), len({i.group for i in items}),
        groups_across_splits(items, splits),
    )  # fmt: skip
