"""Dataset manifests, folder importers, the torch dataset (same pixels as serving, masks moved with them) and
``prepare`` (the daemon's decode and face code turning a video into 32 evenly spaced crops)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from deepsift.engines.faces import FaceBox, square_crop
from deepsift.engines.media import decode_sampled, sample_frame_indices, write_video
from deepsift.engines.preprocess import preprocess_image
from deepsift.engines.recipes import AugmentSpec, load_recipe
from deepsift.trainer.augment import Augmenter
from deepsift.trainer.data import (
    ManifestDataset,
    ManifestRow,
    class_index,
    import_binary_folders,
    import_class_folders,
    read_manifest,
    relabel,
    write_manifest,
)
from deepsift.trainer.prepare import prepare

ROWS = [
    ManifestRow(path="a.png", label="real", split="train", video_id="v1", face_description="a face"),
    ManifestRow(path="b.png", label="fake", split="val", manipulation="tampered", mask_path="b_mask.png"),
]


def save(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_manifest_survives_a_round_trip(tmp_path: Path, suffix: str) -> None:
    assert read_manifest(write_manifest(ROWS, tmp_path / f"m{suffix}")) == ROWS


def test_a_manifest_with_an_unknown_column_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("path,label,split,colour\na.png,real,train,red\n")
    with pytest.raises(ValidationError, match="colour"):
        read_manifest(tmp_path / "m.csv")


def test_the_binary_folder_layout_is_imported(tmp_path: Path) -> None:
    # Given train/REAL, train/FAKE (nested) and Validation/real folders
    pixel = np.zeros((4, 4, 3), np.uint8)
    for name in ("train/REAL/x.jpg", "train/FAKE/sub/y.png", "Validation/real/z.jpg", "train/FAKE/notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"") if name.endswith(".txt") else save(tmp_path / name, pixel)

    # Then each media file becomes a row with its split and label, paths relative to the root
    rows = {r.path: (r.split, r.label) for r in import_binary_folders(tmp_path)}
    assert rows == {"train/REAL/x.jpg": ("train", "real"), "train/FAKE/sub/y.png": ("train", "fake"),
                    "Validation/real/z.jpg": ("val", "real")}  # fmt: skip


def test_the_three_class_layout_is_imported_with_its_masks(tmp_path: Path) -> None:
    pixel = np.zeros((4, 4, 3), np.uint8)
    save(tmp_path / "train/real/r.png", pixel)
    save(tmp_path / "train/tampered/t.png", pixel)
    save(tmp_path / "train/synthetic/s.png", pixel)
    save(tmp_path / "train/masks/t.png", pixel)
    rows = {r.path: r for r in import_class_folders(tmp_path)}
    assert set(rows) == {"train/real/r.png", "train/tampered/t.png", "train/synthetic/s.png"}
    assert rows["train/tampered/t.png"].mask_path == "train/masks/t.png"
    assert rows["train/tampered/t.png"].manipulation == "tampered" and rows["train/real/r.png"].label == "real"
    assert rows["train/synthetic/s.png"].mask_path == ""


def test_classes_follow_the_recipe_task() -> None:
    real, tampered = ROWS
    binary, multitask, sd2 = load_recipe("demo-tiny"), load_recipe("tiny-multitask"), load_recipe("tiny-sd2")
    assert (class_index(real, binary.task), class_index(tampered, binary.task)) == (0, 1)
    assert class_index(tampered, multitask.task) == multitask.task.class_names.index("tampered")
    with pytest.raises(ValueError, match="not a class"):
        class_index(tampered, sd2.task)
    swapped = relabel([tampered], {"tampered": "face_swapping"})[0]
    assert class_index(swapped, sd2.task) == sd2.task.class_names.index("face_swapping")


def test_a_dataset_item_has_the_serving_pixels_and_a_mask_that_follows_them(tmp_path: Path) -> None:
    # Given a non-square image with a mask over its left half, under a longest-side pad contract
    rgb = np.random.default_rng(0).integers(0, 255, (60, 100, 3), dtype=np.uint8)
    save(tmp_path / "b.png", rgb)
    mask = np.zeros((60, 100), np.uint8)
    mask[:, :50] = 255
    Image.fromarray(mask).save(tmp_path / "b_mask.png")
    recipe = load_recipe("tiny-multitask")
    item = ManifestDataset([ROWS[1]], tmp_path, recipe)[0]

    # Then the pixels are exactly what the daemon's preprocessing makes of the decoded image
    torch.testing.assert_close(
        item["pixels"], preprocess_image(decode_sampled(tmp_path / "b.png", 1).frames[0].rgb, recipe.input)
    )
    # and the mask was padded like the image: left half of the content rows, none in the padding
    size = recipe.input.size
    assert item["has_mask"] and item["mask"].shape == (size, size)
    top = (size - round(60 * size / 100)) // 2
    assert item["mask"][:top].sum() == 0 and item["mask"][size // 2, : size // 2 - 1].all()
    assert not item["mask"][size // 2, size // 2 + 1 :].any()


def test_a_flip_moves_the_mask_with_the_image() -> None:
    image = torch.zeros(3, 8, 8, dtype=torch.uint8)
    image[:, :, :2] = 255
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[:, :, :2] = True
    flipped, moved = Augmenter(AugmentSpec(hflip=1.0))(image, mask)
    assert moved[0, :, -2:].all() and not moved[0, :, :-2].any()
    assert (flipped[0, :, -2:] == 255).all()


class FixedBox:
    """A face detector that finds one fixed box in every frame (``prepare`` takes any FaceDetector)."""

    def __init__(self, box: FaceBox) -> None:
        self.box = box

    def detect(self, frames: list[np.ndarray]) -> list[list[FaceBox]]:
        return [[self.box] for _ in frames]


def test_prepare_turns_a_video_into_32_evenly_spaced_face_crops(tmp_path: Path) -> None:
    # Given a 100-frame clip whose frames differ in brightness, listed in a manifest
    frames = [np.full((64, 96, 3), 2 * i, np.uint8) for i in range(100)]
    write_video(tmp_path / "clip.mp4", iter(frames), fps=25.0)
    manifest = write_manifest([ManifestRow(path="clip.mp4", label="fake", split="train")], tmp_path / "m.jsonl")
    box = FaceBox(30, 10, 60, 40, 0.99)

    # When it is prepared with the daemon's decode and face code
    summary = prepare(manifest, tmp_path / "out", load_recipe("demo-tiny").input, frames=32, detector=FixedBox(box))

    # Then there are 32 crops at the evenly spaced indices, each the daemon's square crop of its frame
    rows = read_manifest(summary.manifest)
    assert summary.crops == 32 and [r.frame_index for r in rows] == sample_frame_indices(100, 32)
    assert {r.video_id for r in rows} == {"clip"} and {r.label for r in rows} == {"fake"}
    decoded = {f.index: f.rgb for f in decode_sampled(tmp_path / "clip.mp4", 32).frames}
    for row in rows[:3]:
        crop = np.asarray(Image.open(tmp_path / "out" / row.path))
        np.testing.assert_array_equal(
            crop, square_crop(decoded[row.frame_index], box, load_recipe("demo-tiny").input.face_margin)
        )
