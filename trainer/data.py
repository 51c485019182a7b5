"""Datasets: a manifest (CSV or JSONL) of media with labels, masks, video ids, descriptions and splits; importers
for common folder layouts; and the torch dataset that decodes and preprocesses exactly as the daemon does.

Paths in a manifest are relative to the manifest's folder unless absolute. ``label`` is the binary truth
(real/fake); ``manipulation`` names the fake's type (e.g. ``tampered``, ``face_swapping``), which multi-class
recipes use as the class. A real image with no mask is supervised as an all-zero mask.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict

from deepsift.engines.decoders import DECODERS, DecoderOptions
from deepsift.engines.preprocess import fit_to_square, normalize_image, resize_image
from deepsift.engines.recipes import Recipe, TaskSpec

Split = Literal["train", "val", "test"]
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test", "testing": "test"}  # fmt: skip
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")


class ManifestRow(BaseModel):
    """One media item: an image, a video (before ``trainer prepare``) or a face crop (after it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    label: Literal["real", "fake"]
    split: Split
    manipulation: str = ""
    mask_path: str = ""
    video_id: str = ""
    face_description: str = ""
    environment_description: str = ""
    frame_index: int = 0
    track_id: int = 0


FIELDS = tuple(ManifestRow.model_fields)


def read_manifest(path: Path) -> list[ManifestRow]:
    """Rows of a ``.csv`` or ``.jsonl`` manifest; unknown columns are refused."""
    path = Path(path)
    if path.suffix == ".jsonl":
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    elif path.suffix == ".csv":
        with open(path, newline="") as f:
            records = [{k: v for k, v in row.items() if v not in (None, "")} for row in csv.DictReader(f)]
    else:
        raise ValueError(f"manifest must be .csv or .jsonl, got {path.name}")
    return [ManifestRow.model_validate(r) for r in records]


def write_manifest(rows: Iterable[ManifestRow], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = list(rows)
    if path.suffix == ".jsonl":
        path.write_text("".join(r.model_dump_json() + "\n" for r in rows))
    elif path.suffix == ".csv":
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(r.model_dump() for r in rows)
    else:
        raise ValueError(f"manifest must be .csv or .jsonl, got {path.name}")
    return path


def _media_files(folder: Path) -> list[Path]:
    suffixes = IMAGE_SUFFIXES + VIDEO_SUFFIXES
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def _splits(root: Path) -> list[tuple[Split, Path]]:
    found = [(SPLIT_ALIASES[d.name.lower()], d) for d in sorted(root.iterdir()) if d.name.lower() in SPLIT_ALIASES]
    if not found:
        raise ValueError(f"{root} has no split folders ({', '.join(sorted(set(SPLIT_ALIASES)))})")
    return found  # type: ignore[return-value]


def import_binary_folders(root: Path) -> list[ManifestRow]:
    """``root/<split>/REAL|FAKE/…`` (any case, nested folders allowed) → manifest rows relative to ``root``."""
    rows = []
    for split, folder in _splits(Path(root)):
        for label_dir in sorted(d for d in folder.iterdir() if d.is_dir()):
            label = label_dir.name.lower()
            if label not in ("real", "fake"):
                raise ValueError(f"{label_dir}: expected REAL or FAKE folders")
            manipulation = "" if label == "real" else "fake"
            rows += [
                ManifestRow(path=str(p.relative_to(root)), label=label, split=split, manipulation=manipulation)
                for p in _media_files(label_dir)
            ]
    return rows


def import_class_folders(root: Path, real_class: str = "real", mask_folder: str = "masks") -> list[ManifestRow]:
    """``root/<split>/<class>/…`` with masks as ``root/<split>/masks/<image stem>.png`` (3-class SIDA-style, or
    any class set); the class folder named ``real_class`` is real, every other one is a manipulation type."""
    rows = []
    for split, folder in _splits(Path(root)):
        masks = folder / mask_folder
        for class_dir in sorted(d for d in folder.iterdir() if d.is_dir() and d.name != mask_folder):
            name = class_dir.name.lower()
            for p in _media_files(class_dir):
                mask = masks / f"{p.stem}.png"
                rows.append(ManifestRow(
                    path=str(p.relative_to(root)), label="real" if name == real_class else "fake", split=split,
                    manipulation="" if name == real_class else name,
                    mask_path=str(mask.relative_to(root)) if mask.exists() else "",
                ))  # fmt: skip
    return rows


def class_index(row: ManifestRow, task: TaskSpec) -> int:
    """The row's class in the recipe's task: real/positive for binary tasks, the manipulation type otherwise."""
    if task.kind == "binary":
        return task.class_names.index(task.positive_class if row.label == "fake" else task.real_class)
    if row.label == "real":
        return task.class_names.index(task.real_class)
    if row.manipulation not in task.class_names:
        raise ValueError(f"{row.path}: manipulation {row.manipulation!r} is not a class of {task.class_names}")
    return task.class_names.index(row.manipulation)


def relabel(rows: Sequence[ManifestRow], manipulations: dict[str, str]) -> list[ManifestRow]:
    """Rename manipulation types (a dataset's names → a recipe's class names)."""
    return [r.model_copy(update={"manipulation": manipulations.get(r.manipulation, r.manipulation)}) for r in rows]


def load_rgb(path: Path) -> np.ndarray:
    """An image decoded as the daemon decodes it (upright RGB uint8), by the registry's CPU decoder."""
    return DECODERS.get("pyav")(DecoderOptions())(path, 1).frames[0].rgb


class ManifestDataset(torch.utils.data.Dataset):
    """Manifest rows → dicts of preprocessed pixels, class, fake flag, mask and descriptions for one recipe.

    Augmentation (training only) runs on the decoded image, or between the shared preprocessing's resize and its
    normalisation (the recipe's ``augment.stage``), so the pixels a trained engine sees at serving time are shaped
    by exactly the same code.
    """

    def __init__(self, rows: Sequence[ManifestRow], root: Path, recipe: Recipe, augment: Any = None) -> None:
        self.rows, self.root, self.recipe, self.augment = list(rows), Path(root), recipe, augment
        self.targets = [class_index(r, recipe.task) for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def _mask(self, row: ManifestRow, shape: tuple[int, int]) -> tuple[torch.Tensor, bool]:
        if row.mask_path:
            mask = np.asarray(Image.open(self.root / row.mask_path).convert("L").resize(shape[::-1], Image.NEAREST))
            return torch.from_numpy(mask >= 128)[None], True
        return torch.zeros(1, *shape, dtype=torch.bool), row.label == "real"

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.rows[i]
        image = torch.from_numpy(np.require(load_rgb(self.root / row.path), requirements=["W"])).permute(2, 0, 1)
        mask, has_mask = self._mask(row, tuple(image.shape[1:]))
        augment = self.augment
        if augment is not None and augment.stage == "decoded":
            image, mask = augment(image, mask)
        contract = self.recipe.input
        resized = resize_image(image.permute(1, 2, 0), contract)
        mask = fit_to_square(mask.float(), contract.size, contract.resize_mode, rounding=contract.rounding) >= 0.5
        if augment is not None and augment.stage == "resized":
            resized, mask = augment(resized, mask)
        return {
            "pixels": normalize_image(resized, contract),
            "target": self.targets[i],
            "fake": float(row.label == "fake"),
            "mask": mask[0].float(),
            "has_mask": has_mask,
            "face_description": row.face_description,
            "environment_description": row.environment_description,
            "index": i,
        }


def dataset_for(manifest: Path, split: Split, recipe: Recipe, augment: Any = None) -> ManifestDataset:
    rows = [r for r in read_manifest(manifest) if r.split == split]
    if not rows:
        raise ValueError(f"{manifest} has no rows in split {split!r}")
    return ManifestDataset(rows, Path(manifest).parent, recipe, augment)
