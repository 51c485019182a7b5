"""Folder layouts: CiFake as Kaggle ships it, and a generic class-folder layout with tamper masks.

CiFake (seed 000 §2.2)::

    ROOT/train/REAL/0000 (10).jpg   ROOT/train/FAKE/…   ROOT/test/REAL/…   ROOT/test/FAKE/…

Generic (SIDA-style classes, or any; split folders optional)::

    ROOT/[train|val|test/]<class>/…/image.png        the class named --real-class is real, every other is a fake type
    ROOT/[train|val|test/]masks/<class>/…/image.png  its mask (or masks/image.png); a mask no image has is an error
    ROOT/[…/]<class>/<video>/0001.png                 frames of one video: one group, video id <class>/<video>

Without split folders the items are dealt 70/15/15 (seed 000 §2.2); frames of one video always share a split.
"""

from __future__ import annotations

from pathlib import Path

from deepsift.trainer.datasets.common import (
    IMAGE_SUFFIXES,
    IMPORTERS,
    DatasetLayoutError,
    ImportOptions,
    Item,
    Split,
    media_files,
    relative,
    require_dir,
)

SPLIT_FOLDERS: dict[str, Split] = {"train": "train", "training": "train", "val": "val", "valid": "val",
                                   "validation": "val", "test": "test", "testing": "test"}  # fmt: skip
MASKS = "masks"


@IMPORTERS.register("cifake")
def import_cifake(root: Path, options: ImportOptions) -> list[Item]:
    """CiFake's train/ and test/ folders of REAL and FAKE images (val is carved from train)."""
    items = []
    for split in ("train", "test"):
        folder = require_dir(root / split, "CiFake has train/ and test/")
        for name in ("REAL", "FAKE"):
            images = media_files(require_dir(folder / name, f"CiFake's {split}/ has REAL/ and FAKE/"), IMAGE_SUFFIXES)
            if not images:
                raise DatasetLayoutError(f"{folder / name}: no images")
            label = "real" if name == "REAL" else "fake"
            manipulation = "" if label == "real" else "synthetic"
            items += [Item(relative(p, root), label, relative(p, root), split, manipulation) for p in images]
    return items


def _split_folders(root: Path) -> list[tuple[Split | None, Path]]:
    children = sorted(d for d in require_dir(root, "dataset root").iterdir() if d.is_dir())
    splits = [d for d in children if d.name.lower() in SPLIT_FOLDERS]
    if not splits:
        return [(None, root)]
    others = [d.name for d in children if d not in splits]
    if others:
        raise DatasetLayoutError(f"{root}: split folders beside other folders ({', '.join(others)}); use one layout")
    return [(SPLIT_FOLDERS[d.name.lower()], d) for d in splits]


def _mask_index(folder: Path) -> dict[str, Path]:
    """Masks by the name they are matched on: ``class/…/stem`` and, as a fallback, ``stem``."""
    masks = folder / MASKS
    found = media_files(masks, IMAGE_SUFFIXES) if masks.is_dir() else []
    return {relative(m, masks).rsplit(".", 1)[0]: m for m in found}


def _class_items(folder: Path, class_dir: Path, root: Path, split: Split | None, real: str, masks: dict) -> list[Item]:
    name = class_dir.name.lower()
    label = "real" if name == real else "fake"
    items = []
    for path in media_files(class_dir):
        inner = path.relative_to(class_dir)
        key = (class_dir.relative_to(folder) / inner).with_suffix("").as_posix()
        mask = masks.pop(key, None) or masks.pop(path.stem, None)
        video = (class_dir / inner.parent).relative_to(root).as_posix() if inner.parent != Path() else ""
        items.append(Item(
            relative(path, root), label, group=video or relative(path, root), split=split,
            manipulation="" if label == "real" else name, mask_path=relative(mask, root) if mask else "",
            video_id=video,
        ))  # fmt: skip
    return items


@IMPORTERS.register("folders")
def import_folders(root: Path, options: ImportOptions) -> list[Item]:
    """Class folders (in split folders or not), masks matched by path or stem, frame folders grouped."""
    items, real = [], options.real_class.lower()
    for split, folder in _split_folders(root):
        masks = _mask_index(folder)
        classes = sorted(d for d in folder.iterdir() if d.is_dir() and d.name != MASKS)
        if not classes:
            raise DatasetLayoutError(f"{folder}: no class folders")
        for class_dir in classes:
            items += _class_items(folder, class_dir, root, split, real, masks)
        if masks:
            orphan = sorted(masks.values())
            raise DatasetLayoutError(f"{orphan[0]}: a mask of no image ({len(orphan)} such masks in {folder / MASKS})")
    if not any(i.label == "real" for i in items):
        raise DatasetLayoutError(f"{root}: no {options.real_class!r} class folder of real media (see --real-class)")
    return items
