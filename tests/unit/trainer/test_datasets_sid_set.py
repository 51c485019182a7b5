"""``trainer import-dataset sid_set``: SID_Set's hub layout (parquet shards with embedded images and masks, built
here with pyarrow and real PNG/JPEG/WebP bytes) → extracted files and a manifest the multi-task recipes train on."""

from __future__ import annotations

import io
import re
import struct
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from deepsift.engines.recipes import load_recipe
from deepsift.trainer.cli import main
from deepsift.trainer.data import dataset_for, read_manifest
from deepsift.trainer.datasets import DatasetLayoutError, SplitSpec, import_dataset
from deepsift.trainer.datasets.common import Item

# The hub's schema: datasets' Image feature is stored as a {bytes, path} struct.
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
SCHEMA = pa.schema([("img_id", pa.string()), ("image", IMAGE), ("mask", IMAGE), ("width", pa.int64()),
                    ("height", pa.int64()), ("label", pa.int64())])  # fmt: skip
SIZE = 16
LEFT_HALF = np.zeros((SIZE, SIZE), np.uint8)
LEFT_HALF[:, : SIZE // 2] = 255
SAFE_NAME = re.compile(r"[A-Za-z0-9._~-]+\.(png|jpg|webp)")


def encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return out.getvalue()


def picture(value: int, fmt: str = "PNG") -> bytes:
    """A 16×16 RGB image whose bytes differ from every other value's."""
    array = np.full((SIZE, SIZE, 3), value, np.uint8)
    array[0, 0] = (value * 7 % 256, 3, 5)
    return encode(array, fmt)


def row(img_id: str, label: int, image: bytes | None, mask: bytes | None = None) -> dict:
    return {
        "img_id": img_id, "image": {"bytes": image, "path": f"{img_id}.png"},
        "mask": None if mask is None else {"bytes": mask, "path": None}, "width": SIZE, "height": SIZE, "label": label,
    }  # fmt: skip


def shard(path: Path, rows: list[dict], schema: pa.Schema = SCHEMA) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=3)
    return path


def sid_tree(root: Path) -> dict[str, list[dict]]:
    """SID_Set in the hub's layout: two train shards and one validation shard, every label and mask encoding."""
    reals = [row(f"{n:012d}", 0, picture(n, "JPEG" if n % 2 else "PNG")) for n in range(40)]
    shards = {
        "train-00000-of-00002.parquet": [
            *reals[:20],
            row("sd_0001", 1, picture(101, "JPEG")),
            row("sd_0001", 1, picture(102, "JPEG")),  # an id met twice in one folder
            row("000000000003", 2, picture(103), encode(LEFT_HALF // 255)),  # a 0/1 mask; the id of real 3
        ],
        "train-00001-of-00002.parquet": [
            *reals[20:40],
            row("gen/a b", 1, picture(104, "WEBP")),
            row("gen_a_b", 1, picture(105, "WEBP")),  # sanitises to what "gen/a b" sanitises to
            row("coco/000000000021", 2, picture(106, "JPEG"), encode(LEFT_HALF, "JPEG")),
        ],
        "validation-00000-of-00001.parquet": [
            row("000000900001", 0, picture(107)),
            row("flux_77", 1, picture(108, "JPEG")),
            row("000000900001", 2, picture(109), encode(LEFT_HALF)),  # the edit of the real one beside it
        ],
    }
    for name, rows in shards.items():
        shard(root / "data" / name, rows)
    return shards


def imported(root: Path, out: Path, **kwargs):
    summary = import_dataset("sid_set", root, out, **kwargs)
    return summary, read_manifest(summary.manifest)


def test_labels_splits_and_extracted_bytes_are_the_shards(tmp_path: Path) -> None:
    # Given SID_Set as the hub ships it
    shards = sid_tree(tmp_path / "SID_Set")
    # When it is imported into a manifest outside the dataset folder
    summary, rows = imported(tmp_path / "SID_Set", tmp_path / "out" / "m.jsonl")
    # Then every row is there once, labelled by SID_Set's label, extracted beside the manifest as its own bytes
    embedded = Counter(
        ("val" if name.startswith("validation") else "train", r["label"], r["image"]["bytes"])
        for name, rs in shards.items()
        for r in rs
    )
    label_of = {("real", ""): 0, ("fake", "synthetic"): 1, ("fake", "tampered"): 2}
    official = {"train": "train", "test": "train", "val": "val"}  # test is carved from the train shards
    found = Counter(
        (official[r.split], label_of[r.label, r.manipulation], (tmp_path / "out" / r.path).read_bytes()) for r in rows
    )
    assert found == embedded
    assert all(r.path.startswith("m-media/") for r in rows)
    suffixes = Counter(Path(r.path).suffix for r in rows)
    assert suffixes == {".png": 23, ".jpg": 24, ".webp": 2}
    # and the hub's validation is val, the test split SID_Set lacks is carved from its train rows
    assert {r.split for r in rows if r.video_id.startswith("val/")} == {"val"}
    assert {r.split for r in rows if r.video_id.startswith("train/")} == {"train", "test"}
    assert "test carved from its train items" in summary.protocol
    # and an edit shares the group, so the split, of the photograph whose id it keeps
    split_of = {r.video_id: r.split for r in rows}
    assert split_of["train/tampered/000000000003"] == split_of["train/real/000000000003"]
    # 40 photographs (one with its edit), sd_0001, the two gen ids, the coco edit, and validation's two ids
    assert summary.groups == 40 + 1 + 2 + 1 + 2 and summary.groups_across_splits == 0


def test_names_are_safe_and_unique(tmp_path: Path) -> None:
    sid_tree(tmp_path / "SID_Set")
    _, rows = imported(tmp_path / "SID_Set", tmp_path / "m.jsonl")
    assert len({r.path for r in rows}) == len(rows) and all(SAFE_NAME.fullmatch(Path(r.path).name) for r in rows)
    # "gen/a b" and "gen_a_b" stay apart (a hash of the id marks the one whose characters were replaced),
    # and the second "sd_0001" is counted
    synthetic = sorted(Path(r.path).stem for r in rows if r.manipulation == "synthetic" and r.split != "val")
    assert len(synthetic) == 4 and synthetic[0] == "gen_a_b" and synthetic[2:] == ["sd_0001", "sd_0001~2"]
    assert re.fullmatch(r"gen_a_b-[0-9a-f]{10}", synthetic[1])


def test_masks_are_extracted_as_png_white_where_tampered(tmp_path: Path) -> None:
    sid_tree(tmp_path / "SID_Set")
    _, rows = imported(tmp_path / "SID_Set", tmp_path / "m.jsonl")
    masks = {r.video_id: tmp_path / r.mask_path for r in rows if r.mask_path}
    # Then the three tampered rows, and only they, have masks: PNGs, white where the image was tampered
    assert {r.manipulation for r in rows if r.mask_path} == {"tampered"} and len(masks) == 3
    assert {"val/tampered/000000900001", "train/tampered/000000000003"} < set(masks)
    assert any(re.fullmatch(r"train/tampered/coco_000000000021-[0-9a-f]{10}", k) for k in masks)
    # 0/255 PNG bytes are kept as they are; a 0/1 map and a JPEG are decoded and written as 0/255 PNGs
    assert masks["val/tampered/000000900001"].read_bytes() == encode(LEFT_HALF)
    for path in masks.values():
        decoded = Image.open(path)
        assert decoded.format == "PNG"
        assert np.array_equal(np.asarray(decoded.convert("L")), LEFT_HALF)


def test_the_manifest_trains_the_multitask_recipe_with_its_masks(tmp_path: Path) -> None:
    sid_tree(tmp_path / "SID_Set")
    summary, _ = imported(tmp_path / "SID_Set", tmp_path / "out" / "m.jsonl")
    recipe = load_recipe("tiny-multitask")
    val = dataset_for(summary.manifest, "val", recipe)
    by_class = {recipe.task.class_names[val[i]["target"]]: val[i] for i in range(len(val))}
    assert set(by_class) == {"real", "synthetic", "tampered"}
    tampered = by_class["tampered"]
    half = tampered["mask"].shape[-1] // 2
    assert tampered["has_mask"] and tampered["mask"][:, :half].mean() > 0.9 and tampered["mask"][:, half:].max() == 0
    assert by_class["real"]["has_mask"] and by_class["real"]["mask"].max() == 0  # a real image: an all-zero mask
    assert not by_class["synthetic"]["has_mask"]


def test_a_reimport_writes_the_same_manifest_and_rewrites_no_file(tmp_path: Path) -> None:
    sid_tree(tmp_path / "SID_Set")
    first, _ = imported(tmp_path / "SID_Set", tmp_path / "m.jsonl")
    media = tmp_path / "m-media"
    before = {p: p.stat().st_mtime_ns for p in media.rglob("*") if p.is_file()}
    text = first.manifest.read_text()
    again, _ = imported(tmp_path / "SID_Set", tmp_path / "m.jsonl")
    assert again.manifest.read_text() == text
    assert {p: p.stat().st_mtime_ns for p in media.rglob("*") if p.is_file()} == before


def test_shards_directly_in_the_root_and_a_resplit_are_read(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    for path in sid_tree(tmp_path / "SID_Set"):
        root.mkdir(exist_ok=True)
        (tmp_path / "SID_Set" / "data" / path).rename(root / path)
    summary, rows = imported(root, tmp_path / "m.jsonl", split=SplitSpec.parse("70/15/15"), seed=1)
    assert len(rows) == 49 and {r.split for r in rows} == {"train", "val", "test"}
    assert summary.protocol.startswith("seeded 70/15/15 split")


def bad_shard(name: str, rows: list[dict] | None = None, schema: pa.Schema = SCHEMA):
    def damage(root: Path) -> None:
        if rows is None:
            (root / "data" / name).write_bytes(b"not parquet")
        else:
            shard(root / "data" / name, rows, schema)

    return damage


VALIDATION = "validation-00000-of-00001.parquet"
WHERE = r"validation-00000-of-00001\.parquet row 1 \(img_id 'bad'\)"
GOOD = row("000000900001", 0, picture(1))
NO_MASK_COLUMNS = pa.schema([f for f in SCHEMA if f.name not in ("mask", "label")])


def png_header_only(side: int) -> bytes:
    """A PNG that claims side × side pixels (a decompression bomb's header) over almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")


BOMB = png_header_only(30_000)  # 900 Mpx: past PIL's decompression-bomb limit
BOOL_LABELS = pa.schema([f if f.name != "label" else pa.field("label", pa.bool_()) for f in SCHEMA])


def not_utf8_id(root: Path) -> None:
    """A crafted shard whose img_id column (string, so UTF-8 by the format) holds the bytes ff fe."""
    offsets = pa.py_buffer(np.array([0, 4], np.int32).tobytes())
    ids = pa.Array.from_buffers(pa.string(), 1, [None, offsets, pa.py_buffer(b"ok\xff\xfe")])
    table = pa.Table.from_pylist([GOOD], schema=SCHEMA).set_column(0, "img_id", ids)
    pq.write_table(table, root / "data" / VALIDATION)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda root: [p.unlink() for p in (root / "data").iterdir()], r"SID_Set: no parquet shards"),
        (
            bad_shard(VALIDATION, [{"img_id": "a", "image": None}], NO_MASK_COLUMNS),
            rf"{VALIDATION}: no mask, label columns",
        ),
        (bad_shard(VALIDATION, [GOOD, row("bad", 3, picture(2))]), rf"{WHERE}: label 3 is not 0 \(real\)"),
        (bad_shard(VALIDATION, [GOOD, row("bad", 2, picture(2))]), rf"{WHERE}: a tampered row \(label 2\) without a"),
        (bad_shard(VALIDATION, [GOOD, row("bad", 0, b"")]), rf"{WHERE}: no image bytes"),
        (bad_shard(VALIDATION, [GOOD, row("bad", 0, None)]), rf"{WHERE}: no image bytes"),
        (bad_shard(VALIDATION, [GOOD, row("bad", 1, b"GIF89a....")]), rf"{WHERE}: image bytes are not a PNG, JPEG"),
        (bad_shard(VALIDATION, [GOOD, row("bad", 1, picture(2)[:30])]), rf"{WHERE}: image bytes do not parse"),
        (bad_shard(VALIDATION, [GOOD, row("bad", 2, picture(2), b"\x89PNG...")]), rf"{WHERE}: mask bytes do not"),
        (bad_shard(VALIDATION, [GOOD, row("", 0, picture(2))]), r"row 1: no img_id"),
        (bad_shard("extra-00000-of-00001.parquet", [GOOD]), r"extra-00000-of-00001\.parquet: expected a shard name"),
        (bad_shard(VALIDATION), rf"{VALIDATION}: not a readable parquet file"),
        (not_utf8_id, rf"{VALIDATION}: a text column holds bytes that are not UTF-8"),
        (bad_shard(VALIDATION, [GOOD, row("bad", 1, BOMB)]), rf"{WHERE}: image bytes do not parse .*decompression"),
        (bad_shard(VALIDATION, [GOOD, row("bad", 2, picture(2), BOMB)]), rf"{WHERE}: mask bytes .*decompression"),
        (
            bad_shard(VALIDATION, [row("bad", True, picture(2))], BOOL_LABELS),
            rf"{VALIDATION} row 0 \(img_id 'bad'\): label True is not 0",
        ),
    ],
)
def test_a_malformed_shard_is_refused_naming_file_and_row(tmp_path: Path, damage, message: str) -> None:
    sid_tree(tmp_path / "SID_Set")
    damage(tmp_path / "SID_Set")
    with pytest.raises(DatasetLayoutError, match=message):
        import_dataset("sid_set", tmp_path / "SID_Set", tmp_path / "m.jsonl")


def test_the_command_imports_sid_set(tmp_path: Path, capsys) -> None:
    sid_tree(tmp_path / "SID_Set")
    out = tmp_path / "sid" / "manifest.jsonl"
    assert main(["import-dataset", "sid_set", str(tmp_path / "SID_Set"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "49 sid_set items in 46 groups" in printed and "test carved from its train items" in printed
    assert len(read_manifest(out)) == 49 and (tmp_path / "sid" / "manifest-media" / "val" / "masks").is_dir()
    (tmp_path / "SID_Set" / "data" / VALIDATION).write_bytes(b"junk")
    assert main(["import-dataset", "sid_set", str(tmp_path / "SID_Set"), "--out", str(out)]) == 1
    assert "not a readable parquet file" in capsys.readouterr().err


def test_the_official_split_keeps_all_of_train_as_seed_000_trains(tmp_path: Path, capsys) -> None:
    # Given SID_Set (train and validation shards, no test), imported with --split official
    sid_tree(tmp_path / "SID_Set")
    out = tmp_path / "m.jsonl"
    assert main(["import-dataset", "sid_set", str(tmp_path / "SID_Set"), "--out", str(out), "--split", "official"]) == 0

    # Then every train-shard row is in train, validation in val, none carved, and the command says where to report
    rows = read_manifest(out)
    assert {(r.video_id.split("/")[0], r.split) for r in rows} == {("train", "train"), ("val", "val")}
    printed = capsys.readouterr().out
    assert "own splits only (train, val), none carved" in printed and "evaluate --split val" in printed


def test_the_official_split_refuses_a_dataset_without_splits(tmp_path: Path) -> None:
    from deepsift.trainer.datasets.split import OFFICIAL, assign_splits

    with pytest.raises(DatasetLayoutError, match="without a split of its own"):
        assign_splits([Item(path="a.png", label="real", group="a")], OFFICIAL, seed=0)
