"""Celeb-DF (v2) as published: three folders of videos and the official test list.

    ROOT/Celeb-real/id0_0000.mp4          celebrity footage (real)
    ROOT/Celeb-synthesis/id0_id16_0000.mp4 id0's video id0_0000 with id16's face swapped in (fake)
    ROOT/YouTube-real/00170.mp4           other real footage
    ROOT/List_of_testing_videos.txt       lines "1 YouTube-real/00170.mp4" (1 real, 0 fake)

Listed videos are the test split; the rest is the training pool, from which val is carved. Groups are the
identity of the footage (``id0`` for id0_0000 and every fake made on id0's videos), so a val video never shares
footage or person with a training one. The official test list is kept as published, although it shares identities
with the training videos; the import reports how many groups span splits. All fakes are face swaps (FS).
"""

from __future__ import annotations

import re
from pathlib import Path

from deepsift.trainer.datasets.common import (
    FACE_SWAPPING,
    IMPORTERS,
    VIDEO_SUFFIXES,
    DatasetLayoutError,
    ImportOptions,
    Item,
    media_files,
    relative,
    require_dir,
)

TEST_LIST = "List_of_testing_videos.txt"
FOLDERS = {  # folder: (label, name pattern, group of a match)
    "Celeb-real": ("real", re.compile(r"^(id\d+)_\d+$")),
    "Celeb-synthesis": ("fake", re.compile(r"^(id\d+)_id\d+_\d+$")),
    "YouTube-real": ("real", re.compile(r"^(\d+)$")),
}
LIST_LABELS = {"1": "real", "0": "fake"}


def read_test_list(path: Path) -> dict[str, str]:
    """The official test videos (path relative to the root) and their labels."""
    if not path.is_file():
        raise DatasetLayoutError(f"{path}: missing (Celeb-DF v2 ships it beside the three video folders)")
    listed = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or fields[0] not in LIST_LABELS:
            raise DatasetLayoutError(f"{path}:{n}: expected '1|0 FOLDER/VIDEO.mp4', got {line.strip()!r}")
        listed[fields[1]] = LIST_LABELS[fields[0]]
    return listed


def _item(path: Path, root: Path, folder: str, test: dict[str, str]) -> Item:
    label, pattern = FOLDERS[folder]
    match = pattern.match(path.stem)
    if match is None:
        raise DatasetLayoutError(f"{path}: expected a name like {pattern.pattern} in {folder}")
    group = match.group(1) if folder != "YouTube-real" else f"{folder}/{match.group(1)}"
    name = relative(path, root)
    if name in test and test[name] != label:
        raise DatasetLayoutError(f"{root / TEST_LIST}: labels {name} {test[name]}, but {folder} holds {label} videos")
    manipulation = FACE_SWAPPING if label == "fake" else ""
    return Item(name, label, group, "test" if name in test else None, manipulation)  # type: ignore[arg-type]


@IMPORTERS.register("celebdf")
def import_celebdf(root: Path, options: ImportOptions) -> list[Item]:
    """Every video of the three folders; those of the test list in the test split."""
    test = read_test_list(root / TEST_LIST)
    items = [
        _item(path, root, folder, test)
        for folder in FOLDERS
        for path in media_files(require_dir(root / folder, "a Celeb-DF v2 folder"), VIDEO_SUFFIXES)
    ]
    missing = sorted(set(test) - {i.path for i in items})
    if missing:
        raise DatasetLayoutError(f"{root / TEST_LIST}: {len(missing)} listed videos are missing ({missing[0]}…)")
    return items
