"""The DeepFake Detection Challenge (DFDC) training set as Kaggle ships it: part folders, each with its labels.

    ROOT/dfdc_train_part_0/metadata.json    {"aaqaifqrwn.mp4": {"label": "FAKE", "original": "vpmyeepbep.mp4",
    ROOT/dfdc_train_part_0/aaqaifqrwn.mp4                        "split": "train"}, "vpmyeepbep.mp4": {...}}

A fake and the real footage it was made from (``original``) form one group, so they are dealt to the same split.
The metadata's ``split`` is the dataset's own split (``train`` throughout the training parts, so val and test are
carved from it unless other parts say otherwise). DFDC's fakes are face swaps (SD² Table 1 lists DFDC(P) as FS).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deepsift.trainer.datasets.common import (
    FACE_SWAPPING,
    IMPORTERS,
    DatasetLayoutError,
    ImportOptions,
    Item,
    Split,
    relative,
)

LABELS = {"REAL": "real", "FAKE": "fake"}
SPLIT_NAMES: dict[str, Split] = {"train": "train", "val": "val", "validation": "val", "test": "test"}


def _read_metadata(path: Path) -> dict[str, dict[str, Any]]:
    try:
        metadata = json.loads(path.read_text())
    except ValueError as e:
        raise DatasetLayoutError(f"{path}: not JSON ({e})") from e
    if not isinstance(metadata, dict) or not all(isinstance(v, dict) for v in metadata.values()):
        raise DatasetLayoutError(f"{path}: expected {{file: {{label, original, split}}}}")
    return metadata


def _item(part: Path, root: Path, name: str, entry: dict[str, Any]) -> Item:
    where = f"{part / 'metadata.json'}: {name}"
    label = LABELS.get(str(entry.get("label")))
    if label is None:
        raise DatasetLayoutError(f"{where}: label {entry.get('label')!r} is not REAL or FAKE")
    split = entry.get("split")
    if split is not None and split not in SPLIT_NAMES:
        raise DatasetLayoutError(f"{where}: split {split!r} is not one of {', '.join(SPLIT_NAMES)}")
    original = entry.get("original")
    if label == "fake" and not original:
        raise DatasetLayoutError(f"{where}: a FAKE names no original")
    if not (part / name).is_file():
        raise DatasetLayoutError(f"{where}: listed, but {part / name} is missing")
    return Item(
        relative(part / name, root), label, group=Path(original if label == "fake" else name).stem,
        split=SPLIT_NAMES[split] if split else None, manipulation=FACE_SWAPPING if label == "fake" else "",
        video_id=Path(name).stem,
    )  # fmt: skip


@IMPORTERS.register("dfdc")
def import_dfdc(root: Path, options: ImportOptions) -> list[Item]:
    """Every video listed in a part folder's ``metadata.json`` (``ROOT`` itself may be one part)."""
    parts = [root] if (root / "metadata.json").is_file() else sorted(p.parent for p in root.glob("*/metadata.json"))
    if not parts:
        raise DatasetLayoutError(f"{root}: no metadata.json in it or in its part folders (dfdc_train_part_N/)")
    items = []
    for part in parts:
        metadata = _read_metadata(part / "metadata.json")
        unlisted = sorted(p.name for p in part.glob("*.mp4") if p.name not in metadata)
        if unlisted:
            raise DatasetLayoutError(f"{part}: {len(unlisted)} videos have no label in metadata.json ({unlisted[0]}…)")
        items += [_item(part, root, name, entry) for name, entry in sorted(metadata.items())]
    return items
