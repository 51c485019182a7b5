"""FaceForensics++ as its download script lays it out, with the official split files.

    ROOT/original_sequences/youtube/<c23|c40|raw>/videos/071.mp4
    ROOT/manipulated_sequences/<Method>/<c23|c40|raw>/videos/071_054.mp4     (target 071, source 054)
    ROOT/splits/train.json, val.json, test.json                               ([["071", "054"], ...])

The split files (``dataset/splits`` of the FaceForensics repository) list [target, source] pairs; both ids and
every video made from either of them belong to the pair's split. Without split files (or with ``--split``) the
pairs are dealt whole by the seeded splitter. Methods map onto SD²'s classes (seed 002 Table 1, §A.2: FF++ is FS
and FR): Deepfakes, FaceSwap, FaceShifter → face_swapping; Face2Face, NeuralTextures → face_reenactment.
DeepFakeDetection (Google's actors footage, outside the split files) is not imported.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from deepsift.trainer.datasets.common import (
    FACE_REENACTMENT,
    FACE_SWAPPING,
    IMPORTERS,
    SPLITS,
    VIDEO_SUFFIXES,
    DatasetLayoutError,
    ImportOptions,
    Item,
    Split,
    media_files,
    relative,
    require_dir,
)

METHOD_CLASSES = {
    "Deepfakes": FACE_SWAPPING, "FaceSwap": FACE_SWAPPING, "FaceShifter": FACE_SWAPPING,
    "Face2Face": FACE_REENACTMENT, "NeuralTextures": FACE_REENACTMENT,
}  # fmt: skip
NOT_IMPORTED = ("DeepFakeDetection",)
COMPRESSIONS = ("raw", "c23", "c40")
ORIGINAL = re.compile(r"^(\d{3})$")
MANIPULATED = re.compile(r"^(\d{3})_(\d{3})$")


def _compression(root: Path, wanted: str | None) -> str:
    youtube = require_dir(root / "original_sequences" / "youtube", "FaceForensics++ original sequences")
    found = [c for c in COMPRESSIONS if (youtube / c / "videos").is_dir()]
    if wanted is not None:
        if wanted not in found:
            raise DatasetLayoutError(f"{youtube}: no {wanted}/videos folder (found: {', '.join(found) or 'none'})")
        return wanted
    if len(found) != 1:
        raise DatasetLayoutError(
            f"{youtube}: {'no ' + '/'.join(COMPRESSIONS) + ' videos folder' if not found else 'several compressions'}"
            f" ({', '.join(found) or 'none'}); pass --compression"
        )
    return found[0]


def read_split_files(folder: Path) -> list[tuple[Split, str, str]]:
    """The official ``train/val/test.json`` pair lists as (split, target, source); [] when there are none."""
    files = {s: folder / f"{s}.json" for s in SPLITS}
    present = [s for s, f in files.items() if f.is_file()]
    if not present:
        return []
    if len(present) != len(SPLITS):
        raise DatasetLayoutError(f"{folder}: has {', '.join(present)}.json but not all of train/val/test.json")
    pairs = []
    for split, path in files.items():
        try:
            pairs += [(split, str(a), str(b)) for a, b in json.loads(path.read_text())]
        except (ValueError, TypeError) as e:
            raise DatasetLayoutError(f"{path}: expected a JSON list of [target, source] id pairs ({e})") from e
    return pairs


def _split_of(pairs: list[tuple[Split, str, str]], folder: Path) -> dict[str, Split]:
    split_of: dict[str, Split] = {}
    for split, *ids in pairs:
        for video_id in ids:
            if split_of.setdefault(video_id, split) != split:
                raise DatasetLayoutError(f"{folder}: id {video_id} is in {split_of[video_id]}.json and {split}.json")
    return split_of


def _groups(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Each id's group: the smallest id connected to it by a [target, source] pair (union-find)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {x: find(x) for x in list(parent)}


def _videos(folder: Path, pattern: re.Pattern[str]) -> list[tuple[Path, tuple[str, ...]]]:
    found = []
    for path in media_files(folder, VIDEO_SUFFIXES):
        match = pattern.match(path.stem)
        if match is None:
            raise DatasetLayoutError(f"{path}: expected a name like {pattern.pattern} (FaceForensics++ video ids)")
        found.append((path, match.groups()))
    return found


def _method_folders(root: Path, compression: str) -> list[tuple[str, Path]]:
    manipulated = require_dir(root / "manipulated_sequences", "FaceForensics++ manipulated sequences")
    methods = []
    for folder in sorted(d for d in manipulated.iterdir() if d.is_dir() and d.name not in NOT_IMPORTED):
        if folder.name not in METHOD_CLASSES:
            raise DatasetLayoutError(f"{folder}: unknown method (known: {', '.join(sorted(METHOD_CLASSES))})")
        methods.append((folder.name, require_dir(folder / compression / "videos", f"{folder.name} at {compression}")))
    if not methods:
        raise DatasetLayoutError(f"{manipulated}: no method folders ({', '.join(sorted(METHOD_CLASSES))})")
    return methods


def _official(split_of: dict[str, Split], ids: tuple[str, ...], path: Path) -> Split | None:
    if not split_of:
        return None
    splits = {split_of.get(i) for i in ids}
    if None in splits:
        raise DatasetLayoutError(f"{path}: id {'/'.join(ids)} is in none of the split files")
    if len(splits) > 1:
        raise DatasetLayoutError(f"{path}: the split files put {' and '.join(ids)} in different splits")
    return splits.pop()


@IMPORTERS.register("ffpp")
def import_ffpp(root: Path, options: ImportOptions) -> list[Item]:
    """Original (real) and manipulated (fake) videos of one compression, each with its official split."""
    compression = _compression(root, options.compression)
    originals = _videos(root / "original_sequences" / "youtube" / compression / "videos", ORIGINAL)
    fakes = [
        (method, path, ids)
        for method, folder in _method_folders(root, compression)
        for path, ids in _videos(folder, MANIPULATED)
    ]
    if not originals:
        raise DatasetLayoutError(f"{root}/original_sequences/youtube/{compression}/videos: no videos")
    listed = read_split_files(root / "splits")
    split_of = _split_of(listed, root / "splits")
    group = _groups([(i[0], i[0]) for _, i in originals] + [ids for _, _, ids in fakes] + [p[1:] for p in listed])
    items = [Item(relative(p, root), "real", group[i[0]], _official(split_of, i, p)) for p, i in originals]
    items += [
        Item(relative(p, root), "fake", group[ids[0]], _official(split_of, ids, p), manipulation=METHOD_CLASSES[m])
        for m, p, ids in fakes
    ]
    return items
