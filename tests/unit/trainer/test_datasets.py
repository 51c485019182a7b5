"""``trainer import-dataset``: the papers' datasets in their own layouts (built here, tiny, with real media files)
→ manifests whose labels, classes and splits are the datasets' own, groups never split, malformed trees refused."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepsift.engines.media import write_video
from deepsift.engines.recipes import load_recipe
from deepsift.trainer.cli import main
from deepsift.trainer.data import IMAGE_SUFFIXES, VIDEO_SUFFIXES, ManifestDataset, ManifestRow, read_manifest
from deepsift.trainer.datasets import DatasetLayoutError, ImportOptions, SplitSpec, import_dataset
from deepsift.trainer.datasets import common as datasets_common
from deepsift.trainer.datasets.ffpp import METHOD_CLASSES
from deepsift.trainer.datasets.split import deal_groups

METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter")


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a real two-frame 16×16 H.264 video, copied wherever a dataset has a video."""
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    write_video(path, [np.full((16, 16, 3), v, np.uint8) for v in (40, 200)], fps=25.0)
    return path.read_bytes()


def put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def image(path: Path, value: int = 128, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3) if mode == "RGB" else (8, 8), value, np.uint8), mode).save(path)
    return path


def rows_by_path(manifest: Path, base: Path) -> dict[str, ManifestRow]:
    """The manifest's rows by their file's path relative to ``base``."""
    return {(manifest.parent / r.path).resolve().relative_to(base.resolve()).as_posix(): r
            for r in read_manifest(manifest)}  # fmt: skip


def assert_groups_whole(rows: list[ManifestRow], group_of) -> None:
    """No group (as ``group_of`` names a row's) has rows in two splits."""
    splits = defaultdict(set)
    for r in rows:
        splits[group_of(r)].add(r.split)
    assert all(len(s) == 1 for s in splits.values()), {g: s for g, s in splits.items() if len(s) > 1}


# --- FaceForensics++ ----------------------------------------------------------------------------------------------


def ffpp_tree(root: Path, clip: bytes, pairs: list[tuple[str, str]], compressions=("c23",)) -> Path:
    for c in compressions:
        for a, b in pairs:
            for x, y in ((a, b), (b, a)):
                put(root / f"original_sequences/youtube/{c}/videos/{x}.mp4", clip)
                for method in METHODS:
                    put(root / f"manipulated_sequences/{method}/{c}/videos/{x}_{y}.mp4", clip)
    return root


def test_ffpp_keeps_the_official_splits_and_maps_methods_to_sd2_classes(tmp_path: Path, clip: bytes) -> None:
    # Given FF++ with three [target, source] pairs, one per official split file
    root = ffpp_tree(tmp_path / "ffpp", clip, [("000", "001"), ("002", "003"), ("004", "005")])
    for split, pair in (("train", ["000", "001"]), ("val", ["002", "003"]), ("test", ["004", "005"])):
        put(root / f"splits/{split}.json", json.dumps([pair]).encode())
    # When it is imported into a manifest outside the dataset folder
    summary = import_dataset("ffpp", root, tmp_path / "out" / "m.jsonl")
    rows = rows_by_path(summary.manifest, tmp_path)
    # Then every video is there once, real or fake by its folder, fakes in SD²'s classes,
    assert len(rows) == 6 + 6 * 5
    assert rows["ffpp/original_sequences/youtube/c23/videos/003.mp4"].label == "real"
    classes = {p.split("/")[2]: r.manipulation for p, r in rows.items() if r.label == "fake"}
    assert classes == {"Deepfakes": "face_swapping", "FaceSwap": "face_swapping", "FaceShifter": "face_swapping",
                       "Face2Face": "face_reenactment", "NeuralTextures": "face_reenactment"}  # fmt: skip
    # and each video is in the split file of its ids (target and source together)
    split_of_id = {"000": "train", "001": "train", "002": "val", "003": "val", "004": "test", "005": "test"}
    assert all(r.split == split_of_id[Path(p).stem[:3]] for p, r in rows.items())
    assert summary.protocol == "the dataset's own splits" and summary.groups_across_splits == 0
    # and the paths, relative to the manifest, name the dataset's files
    assert all((summary.manifest.parent / r.path).read_bytes() == clip for r in rows.values())


def test_the_ffpp_classes_are_classes_of_the_sd2_recipe() -> None:
    assert set(METHOD_CLASSES.values()) < set(load_recipe("sd2-clip-l14").task.class_names)


def test_ffpp_without_split_files_deals_whole_pairs(tmp_path: Path, clip: bytes) -> None:
    pairs = [(f"{2 * i:03d}", f"{2 * i + 1:03d}") for i in range(20)]
    root = ffpp_tree(tmp_path / "ffpp", clip, pairs)
    summary = import_dataset("ffpp", root, tmp_path / "m.jsonl", seed=3, split=SplitSpec.parse("70/15/15"))
    rows = read_manifest(summary.manifest)
    # Then no pair has videos in two splits (000.mp4, 001.mp4, 000_001.mp4 and 001_000.mp4 by all methods)
    assert_groups_whole(rows, lambda r: int(Path(r.path).stem[:3]) // 2)  # pairs are (2i, 2i + 1)
    assert summary.groups == 20 and {r.split for r in rows} == {"train", "val", "test"}


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda r, c: put(r / "manipulated_sequences/Deepfakes/c23/videos/000.mp4", c), "expected a name like"),
        (lambda r, c: put(r / "manipulated_sequences/Magic/c23/videos/000_001.mp4", c), "unknown method"),
        (lambda r, c: (r / "splits/val.json").unlink(), "not all of train/val/test.json"),
        (lambda r, c: put(r / "splits/test.json", b'[["000", "009"]]'), "000 is in train.json and test.json"),
        (lambda r, c: put(r / "splits/test.json", b'{"a": 1}'), "JSON list of \\[target, source\\]"),
        (lambda r, c: put(r / "original_sequences/youtube/c40/videos/000.mp4", c), "several compressions"),
    ],
)
def test_a_malformed_ffpp_tree_is_refused_with_its_reason(tmp_path: Path, clip: bytes, damage, message) -> None:
    root = ffpp_tree(tmp_path / "ffpp", clip, [("000", "001")])
    for split in ("train", "val", "test"):
        put(root / f"splits/{split}.json", b'[["000", "001"]]' if split == "train" else b"[]")
    damage(root, clip)
    with pytest.raises(DatasetLayoutError, match=message):
        import_dataset("ffpp", root, tmp_path / "m.jsonl")


def test_ffpp_imports_the_compression_asked_for(tmp_path: Path, clip: bytes) -> None:
    root = ffpp_tree(tmp_path / "ffpp", clip, [("000", "001")], compressions=("c23", "c40"))
    summary = import_dataset("ffpp", root, tmp_path / "m.jsonl", options=ImportOptions(compression="c40"))
    assert {r.path.split("/")[-3] for r in read_manifest(summary.manifest)} == {"c40"}


# --- DFDC ---------------------------------------------------------------------------------------------------------


def dfdc_tree(root: Path, clip: bytes, originals: int, fakes_per_original: int = 2, parts: int = 2) -> Path:
    for n in range(originals):
        part = root / f"dfdc_train_part_{n % parts}"
        metadata = json.loads((part / "metadata.json").read_text()) if (part / "metadata.json").exists() else {}
        metadata[f"real{n:04d}.mp4"] = {"label": "REAL", "split": "train", "original": None}
        put(part / f"real{n:04d}.mp4", clip)
        for k in range(fakes_per_original):
            metadata[f"fake{n:04d}x{k}.mp4"] = {"label": "FAKE", "split": "train", "original": f"real{n:04d}.mp4"}
            put(part / f"fake{n:04d}x{k}.mp4", clip)
        put(part / "metadata.json", json.dumps(metadata).encode())
    return root


def test_dfdc_labels_come_from_metadata_and_splits_keep_a_fake_with_its_original(tmp_path: Path, clip: bytes) -> None:
    # Given 100 real videos and two fakes of each over two part folders, all "train" in metadata.json
    root = dfdc_tree(tmp_path / "dfdc", clip, originals=100)
    # When it is imported with the default protocol
    summary = import_dataset("dfdc", root, tmp_path / "m.jsonl", seed=0)
    rows = read_manifest(summary.manifest)
    # Then labels are the metadata's, fakes are face swaps, and val and test are carved 70/15/15 from train
    assert Counter((r.label, r.manipulation) for r in rows) == {("real", ""): 100, ("fake", "face_swapping"): 200}
    shares = Counter(r.split for r in rows)
    assert {s: n / len(rows) for s, n in shares.items()} == pytest.approx({"train": 0.7, "val": 0.15, "test": 0.15},
                                                                        abs=0.04)  # fmt: skip
    assert "val and test carved" in summary.protocol
    # and a fake is always in the split of the footage it was made from
    assert_groups_whole(rows, lambda r: Path(r.path).stem[4:8])
    # and the same seed deals the same split, another seed another one
    again = read_manifest(import_dataset("dfdc", root, tmp_path / "again.jsonl", seed=0).manifest)
    other = read_manifest(import_dataset("dfdc", root, tmp_path / "other.jsonl", seed=1).manifest)
    assert [r.split for r in again] == [r.split for r in rows] != [r.split for r in other]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"label": "MAYBE"}, "is not REAL or FAKE"),
        ({"label": "FAKE", "original": None}, "a FAKE names no original"),
        ({"label": "REAL", "split": "holdout"}, "split 'holdout'"),
    ],
)
def test_a_malformed_dfdc_entry_is_refused(tmp_path: Path, clip: bytes, entry: dict, message: str) -> None:
    root = dfdc_tree(tmp_path / "dfdc", clip, originals=2, parts=1)
    metadata = json.loads((root / "dfdc_train_part_0/metadata.json").read_text())
    metadata["real0000.mp4"] = entry
    put(root / "dfdc_train_part_0/metadata.json", json.dumps(metadata).encode())
    with pytest.raises(DatasetLayoutError, match=message):
        import_dataset("dfdc", root, tmp_path / "m.jsonl")


def test_dfdc_videos_without_labels_or_labels_without_videos_are_refused(tmp_path: Path, clip: bytes) -> None:
    root = dfdc_tree(tmp_path / "dfdc", clip, originals=2, parts=1)
    put(root / "dfdc_train_part_0/stray.mp4", clip)
    with pytest.raises(DatasetLayoutError, match="1 videos have no label"):
        import_dataset("dfdc", root, tmp_path / "m.jsonl")
    (root / "dfdc_train_part_0/stray.mp4").unlink()
    (root / "dfdc_train_part_0/fake0001x1.mp4").unlink()
    with pytest.raises(DatasetLayoutError, match=r"fake0001x1\.mp4: listed, but"):
        import_dataset("dfdc", root, tmp_path / "m.jsonl")


# --- Celeb-DF -----------------------------------------------------------------------------------------------------


def celebdf_tree(root: Path, clip: bytes, identities: int = 12, videos: int = 3) -> tuple[Path, list[str]]:
    names = []
    for i in range(identities):
        for v in range(videos):
            names.append(f"Celeb-real/id{i}_{v:04d}.mp4")
            names.append(f"Celeb-synthesis/id{i}_id{(i + 1) % identities}_{v:04d}.mp4")
    names += [f"YouTube-real/{n:05d}.mp4" for n in range(10)]
    for name in names:
        put(root / name, clip)
    test = ["1 YouTube-real/00003.mp4", "1 Celeb-real/id0_0001.mp4", "0 Celeb-synthesis/id5_id6_0002.mp4"]
    (root / "List_of_testing_videos.txt").write_text("\n".join(test) + "\n")
    return root, test


def test_celebdf_test_list_is_the_test_split_and_val_is_carved_by_identity(tmp_path: Path, clip: bytes) -> None:
    root, test = celebdf_tree(tmp_path / "celebdf", clip)
    summary = import_dataset("celebdf", root, tmp_path / "m.jsonl")
    rows = rows_by_path(summary.manifest, tmp_path)
    # Then the listed videos, and only they, are the test split, with the list's labels
    listed = {f"celebdf/{line.split()[1]}": "real" if line[0] == "1" else "fake" for line in test}
    assert {p: r.label for p, r in rows.items() if r.split == "test"} == listed
    assert {r.manipulation for r in rows.values() if r.label == "fake"} == {"face_swapping"}
    # and train and val never share an identity's footage (id3_0000 and id3_id4_0000 are both id3's)
    pool = [r for p, r in rows.items() if p not in listed]
    assert {r.split for r in pool} == {"train", "val"}
    assert_groups_whole(pool, lambda r: Path(r.path).stem.split("_")[0] if "YouTube" not in r.path else r.path)
    # the published test list shares identities with training, and the summary says so
    assert summary.groups_across_splits == 2


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("0 Celeb-real/id1_0000.mp4", "but Celeb-real holds real videos"),
        ("1 YouTube-real/99999.mp4", "1 listed videos are missing"),
        ("real YouTube-real/00001.mp4", "expected '1|0 FOLDER/VIDEO.mp4'"),
    ],
)
def test_a_malformed_celebdf_tree_is_refused(tmp_path: Path, clip: bytes, line: str, message: str) -> None:
    root, test = celebdf_tree(tmp_path / "celebdf", clip)
    (root / "List_of_testing_videos.txt").write_text("\n".join([*test, line]) + "\n")
    with pytest.raises(DatasetLayoutError, match=message):
        import_dataset("celebdf", root, tmp_path / "m.jsonl")


def test_celebdf_without_its_test_list_or_with_a_stray_name_is_refused(tmp_path: Path, clip: bytes) -> None:
    root, _ = celebdf_tree(tmp_path / "celebdf", clip, identities=2, videos=1)
    put(root / "Celeb-synthesis/id0_0000.mp4", clip)  # a real name in the fakes' folder
    with pytest.raises(DatasetLayoutError, match="expected a name like"):
        import_dataset("celebdf", root, tmp_path / "m.jsonl")
    (root / "List_of_testing_videos.txt").unlink()
    with pytest.raises(DatasetLayoutError, match=r"List_of_testing_videos\.txt: missing"):
        import_dataset("celebdf", root, tmp_path / "m.jsonl")


# --- CiFake and the generic folder layout -------------------------------------------------------------------------


def cifake_tree(root: Path, train: int = 85, test: int = 10) -> Path:
    for split, count in (("train", train), ("test", test)):
        for label in ("REAL", "FAKE"):
            for n in range(count):
                image(root / split / label / f"{n:04d} ({n % 10}).jpg", 200 if label == "REAL" else 20)
    return root


def test_cifake_keeps_its_test_split_and_carves_val_from_train(tmp_path: Path) -> None:
    summary = import_dataset("cifake", cifake_tree(tmp_path / "cifake"), tmp_path / "m.jsonl")
    rows = read_manifest(summary.manifest)
    assert Counter((r.split, r.label) for r in rows)[("test", "real")] == 10
    assert all(r.split == "test" for r in rows if "/test/" in f"/{r.path}")
    val = sum(r.split == "val" for r in rows) / sum(r.split in ("train", "val") for r in rows)
    assert val == pytest.approx(15 / 85, abs=0.04)
    assert {r.manipulation for r in rows if r.label == "fake"} == {"synthetic"}
    # with --split 90/10 (SD² Appendix A.3) the whole set is dealt train/test
    resplit = read_manifest(import_dataset("cifake", tmp_path / "cifake", tmp_path / "r.jsonl",
                                           split=SplitSpec.parse("9:1")).manifest)  # fmt: skip
    assert sum(r.split == "test" for r in resplit) / len(resplit) == pytest.approx(0.1, abs=0.03)
    assert "val" not in {r.split for r in resplit}


def test_cifake_without_its_test_folder_is_refused(tmp_path: Path) -> None:
    root = cifake_tree(tmp_path / "cifake", test=0)
    with pytest.raises(DatasetLayoutError, match=r"cifake/test: no such folder"):
        import_dataset("cifake", root, tmp_path / "m.jsonl")


def folders_tree(root: Path) -> Path:
    for n in range(40):
        image(root / "real" / f"r{n}.png", 200)
        image(root / "synthetic" / f"s{n}.png", 20)
        image(root / "tampered" / f"t{n}.png", 90)
        image(root / "masks" / "tampered" / f"t{n}.png", 255, mode="L")
    for v in range(6):  # frames of six tampered videos
        for f in range(5):
            image(root / "tampered" / f"clip{v}" / f"{f:04d}.png", 90)
    return root


def test_class_folders_with_masks_are_imported_and_frames_of_a_video_stay_together(tmp_path: Path) -> None:
    root = folders_tree(tmp_path / "sida")
    summary = import_dataset("folders", root, tmp_path / "out" / "m.jsonl", seed=5)
    rows = read_manifest(summary.manifest)
    # Then classes are the folders, masks beside the tampered images, a video's frames one group
    assert Counter(r.manipulation or r.label for r in rows) == {"real": 40, "synthetic": 40, "tampered": 70}
    assert all(r.mask_path.endswith(f"masks/tampered/{Path(r.path).name}") for r in rows if r.path.endswith("t3.png"))
    assert sum(bool(r.mask_path) for r in rows) == 40
    frames = [r for r in rows if "/clip" in r.path]
    assert {r.video_id for r in frames} == {f"tampered/clip{v}" for v in range(6)}
    assert_groups_whole(frames, lambda r: r.video_id)
    assert summary.protocol.startswith("the dataset has no split")
    # and the manifest loads into the multi-task dataset, pixels and masks found relative to it
    recipe = load_recipe("tiny-multitask")
    tampered = next(i for i, r in enumerate(rows) if r.mask_path)
    item = ManifestDataset(rows, summary.manifest.parent, recipe)[tampered]
    assert item["has_mask"] and item["mask"].float().mean() > 0.5
    assert item["target"] == recipe.task.class_names.index("tampered")


def test_a_mask_of_no_image_and_a_tree_without_real_media_are_refused(tmp_path: Path) -> None:
    root = folders_tree(tmp_path / "sida")
    image(root / "masks" / "tampered" / "t99.png", 255, mode="L")
    with pytest.raises(DatasetLayoutError, match=r"t99\.png: a mask of no image"):
        import_dataset("folders", root, tmp_path / "m.jsonl")
    (root / "masks/tampered/t99.png").unlink()
    with pytest.raises(DatasetLayoutError, match="no 'pristine' class folder"):
        import_dataset("folders", root, tmp_path / "m.jsonl", options=ImportOptions(real_class="pristine"))


# --- the splitter and the command ---------------------------------------------------------------------------------


def test_groups_of_uneven_sizes_are_dealt_near_the_shares() -> None:
    sizes = {f"g{n}": 1 + n % 7 for n in range(300)}
    dealt = deal_groups(sizes, SplitSpec.parse("70/15/15").shares(), seed=0)
    items = Counter()
    for group, split in dealt.items():
        items[split] += sizes[group]
    total = sum(sizes.values())
    assert {s: n / total for s, n in items.items()} == pytest.approx({"train": 0.7, "val": 0.15, "test": 0.15},
                                                                     abs=0.02)  # fmt: skip
    assert deal_groups(sizes, SplitSpec.parse("70/15/15").shares(), seed=0) == dealt


@pytest.mark.parametrize("text", ["70/30/x", "0/50/50", "70", "1/2/3/4", "-10/55/55"])
def test_a_split_that_is_no_shares_is_refused(text: str) -> None:
    with pytest.raises(DatasetLayoutError, match="expected train/val/test"):
        SplitSpec.parse(text)


def test_split_shares_are_read_as_the_papers_write_them() -> None:
    assert SplitSpec.parse("70/15/15") == SplitSpec(0.7, 0.15, 0.15)
    assert SplitSpec.parse("9:1") == SplitSpec(0.9, 0.0, 0.1) and str(SplitSpec.parse("9:1")) == "90/10"


def test_the_suffixes_are_the_trainers() -> None:
    assert (datasets_common.IMAGE_SUFFIXES, datasets_common.VIDEO_SUFFIXES) == (IMAGE_SUFFIXES, VIDEO_SUFFIXES)


def test_the_command_writes_the_manifest_or_says_what_is_wrong(tmp_path: Path, capsys) -> None:
    root = cifake_tree(tmp_path / "cifake", train=10, test=4)
    assert main(["import-dataset", "cifake", str(root), "--out", str(tmp_path / "m.jsonl"), "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "28 cifake items in 28 groups" in out and len(read_manifest(tmp_path / "m.jsonl")) == 28
    assert main(["import-dataset", "dfdc", str(root), "--out", str(tmp_path / "d.jsonl")]) == 1
    assert "no metadata.json" in capsys.readouterr().err
