"""``trainer prepare`` frames media as the recipe's paper does: whole images for seed 000's full-image recipes (none
dropped for want of a face), and pre-cropped faces (seed 001) kept whole with no second face search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from deepsift.engines.faces import FaceBox
from deepsift.engines.recipes import load_recipe
from deepsift.trainer.data import ManifestRow, read_manifest, write_manifest
from deepsift.trainer.prepare import prepare


class NoFaces:
    """A face detector that finds nothing, as MTCNN does on a landscape or a CiFake thumbnail."""

    def detect(self, frames: list[np.ndarray]) -> list[list[FaceBox]]:
        return [[] for _ in frames]


class MustNotSearch:
    def detect(self, frames: list[np.ndarray]) -> list[list[FaceBox]]:
        raise AssertionError("a pre-cropped face was searched for a face again")


def images(tmp_path: Path) -> tuple[Path, list[np.ndarray]]:
    """Two images of different sizes, a real and a fake, in a manifest."""
    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 256, (48, 40, 3), dtype=np.uint8), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)]
    rows = []
    for i, (picture, label) in enumerate(zip(pictures, ("real", "fake"), strict=True)):
        Image.fromarray(picture).save(tmp_path / f"{i}.png")
        rows.append(ManifestRow(path=f"{i}.png", label=label, split="train"))
    return write_manifest(rows, tmp_path / "m.jsonl"), pictures


def test_a_full_image_recipe_keeps_images_without_faces(tmp_path: Path) -> None:
    # Given face-less images, when they are prepared for seed 000's default (full-image) recipe
    manifest, pictures = images(tmp_path)
    contract = load_recipe("siglip2-binary-b16-224").input
    summary = prepare(manifest, tmp_path / "out", contract, detector=MustNotSearch(), log=lambda line: None)

    # Then every image is kept, whole and unchanged
    assert (summary.crops, summary.without_face) == (2, 0)
    for row, picture in zip(read_manifest(summary.manifest), pictures, strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / row.path)), picture)


def test_its_face_variant_drops_them_as_the_daemon_abstains(tmp_path: Path) -> None:
    manifest, _ = images(tmp_path)
    contract = load_recipe("siglip2-binary-b16-224-face").input
    summary = prepare(manifest, tmp_path / "out", contract, detector=NoFaces(), log=lambda line: None)
    assert (summary.crops, summary.without_face) == (0, 2)


def test_pre_cropped_faces_are_kept_whole_and_not_searched_again(tmp_path: Path) -> None:
    # Given face crops (seed 001's DFWild-Cup images) and the seed 001 recipe, which crops faces when serving
    manifest, pictures = images(tmp_path)
    contract = load_recipe("clip-resnet101-fusion").input
    assert contract.crop_mode == "face"

    # When they are prepared as pre-cropped
    summary = prepare(manifest, tmp_path / "out", contract, detector=MustNotSearch(), precropped=True)

    # Then each crop is its image, unchanged (no second crop with the margin), with its label
    rows = read_manifest(summary.manifest)
    assert (summary.crops, summary.without_face) == (2, 0) and [r.label for r in rows] == ["real", "fake"]
    for row, picture in zip(rows, pictures, strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / row.path)), picture)


def test_the_prepare_command_takes_precropped(tmp_path: Path) -> None:
    from deepsift.trainer.cli import main

    manifest, _ = images(tmp_path)
    argv = ["prepare", "--data", str(manifest), "--recipe", "clip-resnet101-fusion", "--out", str(tmp_path / "out")]
    assert main([*argv, "--precropped"]) == 0
    assert len(read_manifest(tmp_path / "out" / "manifest.jsonl")) == 2
