"""SID_Set (the SIDA paper's Social media Image Detection dataSet) as the HuggingFace hub ships it
(``saberzl/SID_Set``): parquet shards whose rows embed their image and its tamper mask.

    ROOT/data/train-00000-of-00249.parquet … ROOT/data/validation-00000-of-000NN.parquet   (or the shards in ROOT)
    columns: img_id (string), image and mask (the hub's Image feature: {bytes, path}), width, height, label (int)

Labels, by the dataset card: 0 real (COCO photographs, under their COCO ids), 1 fully synthetic, 2 tampered, with a
binary mask of the tampered region. They become real; fake/synthetic; fake/tampered with its mask: the classes of
the multi-task recipes (seed 000 §2.2).

The manifest must point at files, so each image is extracted as the bytes it is stored as (no re-encoding; the
suffix from its magic bytes) to ``MEDIA/<split>/<real|synthetic|tampered>/<name>`` and each mask to
``MEDIA/<split>/masks/<name>.png`` (``ImportOptions.media_dir``; ``import_dataset`` puts it beside the manifest).
Names are the img_id's safe characters, with a hash of the id where others were replaced and a count where an id
repeats in one folder; a re-import computes the same names and rewrites no file that already holds its bytes.
Shards are read a batch of rows at a time: one is about half a gigabyte.

Splits come from the shard names: train and validation (``test-*`` shards are read as test, though the hub has
none: the authors hand out the 60,000 test images on request). Seed 000 §2.2 trains on train and reports on
validation: ``--split official`` keeps both whole and carves nothing, and the paper's figures are ``trainer evaluate
--split val``. Without it the splitter carves the test split the hub lacks from the train items
(``trainer.datasets.split``), as for any dataset.

Groups are img_ids. Real ids are COCO's; a tampered image is said (by a third-party exporter, not the authors) to
keep the id of the photograph it was edited from, and then the two share a group and a re-dealt split never
separates them; ids that are unrelated make each image its own group.

Checked against the dataset card (the hub README's ``dataset_info``): the column names and types, the label values,
210,000 train and 30,000 validation rows, ``data/train-*`` and ``data/validation-*``. Not checked against the data
itself: how the masks are encoded (PNG or not, 0/255 or 0/1: both are read), that real and synthetic rows have a
null mask (a mask on them is ignored), and how tampered ids relate to real ones.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from deepsift.trainer.datasets.common import IMPORTERS, DatasetLayoutError, ImportOptions, Item, Split, relative

COLUMNS = ("img_id", "image", "mask", "label")
LABELS = {0: ("real", ""), 1: ("fake", "synthetic"), 2: ("fake", "tampered")}
# shard name prefixes (the hub names them train-*, validation-*)
SHARD_SPLITS: tuple[tuple[str, Split], ...] = (("train", "train"), ("validation", "val"), ("val", "val"),
                                               ("test", "test"))  # fmt: skip
MAGIC = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"))
BATCH_ROWS = 64  # ~40 MB at SID_Set's ~0.6 MB a row; underneath, pyarrow holds one row group at a time
UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_NAME = 96


def find_shards(root: Path) -> list[Path]:
    """The parquet shards in ``root/data`` (the hub's layout) or else in ``root``, in name order."""
    for folder in (root / "data", root):
        shards = sorted(p for p in folder.glob("*.parquet") if p.is_file()) if folder.is_dir() else []
        if shards:
            return shards
    raise DatasetLayoutError(
        f"{root}: no parquet shards (expected data/train-*.parquet and data/validation-*.parquet, as the hub ships "
        "SID_Set, or the shards themselves in this folder)"
    )


def shard_split(shard: Path) -> Split:
    name = shard.name.lower()
    for prefix, split in SHARD_SPLITS:
        if name.startswith(prefix):
            return split
    raise DatasetLayoutError(f"{shard}: expected a shard name starting with train, validation or test")


def shard_rows(shard: Path) -> Iterator[dict]:
    """The shard's rows (only the columns read), a batch at a time, so a shard is never all in memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with pq.ParquetFile(shard) as parquet:
            missing = [c for c in COLUMNS if c not in parquet.schema_arrow.names]
            if missing:
                raise DatasetLayoutError(
                    f"{shard}: no {', '.join(missing)} column{'s' * (len(missing) > 1)} "
                    f"(SID_Set's shards have {', '.join(COLUMNS)})"
                )
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=list(COLUMNS)):
                yield from batch.to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise DatasetLayoutError(f"{shard}: not a readable parquet file ({e})") from e
    except UnicodeDecodeError as e:  # a string column whose bytes are not UTF-8, as parquet requires
        raise DatasetLayoutError(f"{shard}: a text column holds bytes that are not UTF-8 ({e})") from e


def embedded_bytes(cell: object) -> bytes | None:
    """The bytes of a hub Image cell (``{bytes, path}``, or plain bytes); None for a null or empty one."""
    data = cell.get("bytes") if isinstance(cell, dict) else cell
    return bytes(data) if isinstance(data, bytes | bytearray) and data else None


def image_suffix(data: bytes) -> str | None:
    for magic, suffix in MAGIC:
        if data.startswith(magic):
            return suffix
    return ".webp" if data[:4] == b"RIFF" and data[8:12] == b"WEBP" else None


def checked_image(data: bytes | None, where: str) -> tuple[bytes, str]:
    """The image's bytes and the suffix they call for; refused where they are missing or do not parse."""
    from PIL import Image

    if data is None:
        raise DatasetLayoutError(f"{where}: no image bytes")
    suffix = image_suffix(data)
    try:
        if suffix is not None:
            with Image.open(io.BytesIO(data)) as image:
                image.verify()  # headers and, for PNG, chunk checksums; no pixels decoded
    except Exception as e:  # PIL raises anything from OSError to SyntaxError on a damaged header
        raise DatasetLayoutError(f"{where}: image bytes do not parse ({e})") from e
    if suffix is None:
        raise DatasetLayoutError(f"{where}: image bytes are not a PNG, JPEG or WebP image ({data[:8]!r}…)")
    return data, suffix


def mask_png(data: bytes, where: str) -> bytes:
    """The mask as a PNG whose white is the tampered region: PNG bytes as they are, anything else decoded and
    written as a 0/255 L-mode PNG. A 0/1 label map is scaled up too, since trainer.data cuts masks at 128."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as mask:
            stored_as, gray = mask.format, mask.convert("L")
    except Exception as e:  # as in checked_image
        raise DatasetLayoutError(f"{where}: mask bytes do not decode as an image ({e})") from e
    high = gray.getextrema()[1]
    if stored_as == "PNG" and high > 1:
        return data
    cut = 1 if high <= 1 else 128
    out = io.BytesIO()
    gray.point(lambda v: 255 if v >= cut else 0).save(out, "PNG")
    return out.getvalue()


def media_name(img_id: str, taken: set[str]) -> str:
    """A file name (no suffix) for ``img_id`` that no other row in its folder has: its safe characters, a short
    hash of the id where others were replaced (``a/b`` and ``a_b`` stay apart), a count where the id repeats."""
    safe = UNSAFE.sub("_", img_id).strip("._")[:MAX_NAME]
    if safe != img_id:
        safe = f"{safe or 'id'}-{hashlib.sha256(img_id.encode()).hexdigest()[:10]}"
    name, count = safe, 1
    while name.lower() in taken:  # lower: two names that differ in case are one file on some file systems
        count += 1
        name = f"{safe}~{count}"
    taken.add(name.lower())
    return name


def write_once(path: Path, data: bytes) -> None:
    """``data`` at ``path``, unless the file holds them already (a re-import rewrites nothing); written under a
    temporary name first, so an interrupted import leaves no truncated image under the final one."""
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def extract_row(row: dict, where: str, split: Split, media: Path, taken: dict[Path, set[str]], root: Path) -> Item:
    """One row's image (and a tampered row's mask) written under ``media``, as an item of the dataset."""
    img_id = "" if row.get("img_id") is None else str(row["img_id"])
    if not img_id:
        raise DatasetLayoutError(f"{where}: no img_id")
    where = f"{where} (img_id {img_id!r})"
    if type(row.get("label")) is not int or row["label"] not in LABELS:  # not bool: True would pass as 1
        raise DatasetLayoutError(f"{where}: label {row.get('label')!r} is not 0 (real), 1 (synthetic) or 2 (tampered)")
    label, manipulation = LABELS[row["label"]]
    data, suffix = checked_image(embedded_bytes(row.get("image")), where)
    mask = None
    if manipulation == "tampered":
        stored = embedded_bytes(row.get("mask"))
        if stored is None:
            raise DatasetLayoutError(f"{where}: a tampered row (label 2) without a mask")
        mask = mask_png(stored, where)
    folder = media / split / (manipulation or label)
    name = media_name(img_id, taken[folder])
    image_file, mask_file = folder / f"{name}{suffix}", media / split / "masks" / f"{name}.png"
    write_once(image_file, data)
    if mask is not None:
        write_once(mask_file, mask)
    return Item(
        relative(image_file, root), label, group=img_id, split=split, manipulation=manipulation,
        mask_path=relative(mask_file, root) if mask is not None else "",
        video_id=f"{split}/{manipulation or label}/{name}",  # one per image: evaluate's video figures stay per image
    )  # fmt: skip


@IMPORTERS.register("sid_set")
def import_sid_set(root: Path, options: ImportOptions) -> list[Item]:
    """Every row of SID_Set's shards, its image (and mask) extracted under ``options.media_dir``, its split the
    shard's; the items' paths are relative to ``root``, as every importer's are, even where they leave it."""
    if options.media_dir is None:
        raise ValueError("sid_set extracts the images its shards embed: ImportOptions.media_dir must name a folder")
    root, media = Path(root).resolve(), Path(options.media_dir).resolve()
    taken: dict[Path, set[str]] = defaultdict(set)
    items = []
    for shard in find_shards(root):
        split = shard_split(shard)
        for index, row in enumerate(shard_rows(shard)):
            items.append(extract_row(row, f"{shard} row {index}", split, media, taken, root))
    return items
