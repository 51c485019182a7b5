"""What every dataset importer shares: the item it finds, the registry it joins, its error, and the way items
become manifest rows (``trainer.data.ManifestRow``) with paths relative to the manifest.

An importer reads one dataset in the layout its authors publish and returns :class:`Item` s: the media file, its
label and manipulation class, the dataset's own split when it has one, and a *group* — the items that must never be
dealt to different splits (the frames of one video, a fake and the footage it was made from, the videos of one
source identity). ``trainer.datasets.split`` deals the splits.

This module stays light (no torch): ``trainer --help`` imports the registry to list the kinds.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from deepsift.engines.errors import DeepsiftError
from deepsift.engines.registry import Registry

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
# SD²'s class names (engines/recipes/sd2-clip-l14.json); a dataset's own method names map onto them.
FACE_SWAPPING, FACE_REENACTMENT = "face_swapping", "face_reenactment"
# trainer.data's suffixes, repeated so that listing the kinds does not import torch (a test compares them).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")


class DatasetLayoutError(DeepsiftError):
    """A dataset tree that is not in the layout its importer reads (a missing folder, list or label, a name that
    does not parse); the message names the file and what was expected."""


@dataclass(frozen=True)
class Item:
    """One media file of a dataset, before splits are dealt; ``path`` is relative to the dataset root."""

    path: str
    label: Literal["real", "fake"]
    group: str  # items of one group are always dealt to the same split
    split: Split | None = None  # the dataset's own split, if it publishes one
    manipulation: str = ""
    mask_path: str = ""
    video_id: str = ""


@dataclass(frozen=True)
class ImportOptions:
    """Per-dataset choices: FaceForensics++'s compression level (``raw``, ``c23``, ``c40``; default: the only one
    present), the class folder of real media in the generic folder layout, and where a dataset that embeds its
    media (SID_Set's parquet) extracts them as files (``import_dataset`` names ``<manifest stem>-media`` beside the
    manifest; importers that read files where they lie ignore it)."""

    compression: str | None = None
    real_class: str = "real"
    media_dir: Path | None = None


Importer = Callable[[Path, ImportOptions], list[Item]]
IMPORTERS: Registry[Importer] = Registry("dataset layout")


def media_files(folder: Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES + VIDEO_SUFFIXES) -> list[Path]:
    """Media under ``folder`` (any depth), in a stable order."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetLayoutError(f"{path}: no such folder ({what})")
    return path


def relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root``, through ``..`` where it lies outside (SID_Set's media beside the manifest;
    ``to_rows`` rebases every path onto the manifest's folder)."""
    return Path(os.path.relpath(path, root)).as_posix()


def to_rows(items: list[Item], splits: list[Split], root: Path, manifest_dir: Path) -> list:
    """Manifest rows of ``items`` dealt to ``splits``, their paths relative to the manifest's folder."""
    from deepsift.trainer.data import ManifestRow

    root, manifest_dir = Path(root).resolve(), Path(manifest_dir).resolve()

    def rebase(path: str) -> str:
        return Path(os.path.relpath(root / path, manifest_dir)).as_posix() if path else ""

    rows = []
    for item, split in zip(items, splits, strict=True):
        video_id = item.video_id or Path(item.path).with_suffix("").as_posix()
        rows.append(ManifestRow(
            path=rebase(item.path), label=item.label, split=split, manipulation=item.manipulation,
            mask_path=rebase(item.mask_path), video_id=video_id,
        ))  # fmt: skip
    return rows
