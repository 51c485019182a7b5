"""A multi-task engine (real/synthetic/tampered + tamper masks) served by `daemon scan`'s pipeline end to end:
a real ONNX Runtime engine built from the tiny recipe, real media, a real SQLite database."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepsift.daemon.db import make_database, upgrade_database
from deepsift.daemon.pipeline import JudgeConfig
from deepsift.daemon.repository import VerdictRepository
from deepsift.daemon.scan import run_scan
from deepsift.engines.aggregate import AggregationRule
from deepsift.engines.backends import LoadedEngine, load_engine
from deepsift.engines.media import write_video
from deepsift.engines.models import build_detector
from deepsift.engines.recipes import load_recipe
from deepsift.engines.store import EngineStore
from deepsift.trainer.build import build_engine

CONFIG = JudgeConfig(
    frames_per_video=4,
    rule=AggregationRule.parse("mean"),
    min_track_fraction=0.1,
    decoder="pyav",
    max_media_bytes=10**8,
)


@pytest.fixture(scope="module")
def multitask(tmp_path_factory: pytest.TempPathFactory) -> LoadedEngine:
    recipe = load_recipe("tiny-multitask")
    torch.manual_seed(0)
    store = EngineStore(tmp_path_factory.mktemp("engines"))
    manifest = build_engine(build_detector(recipe), recipe, store, "mt", threshold=0.0)  # threshold 0: all "fake"
    return load_engine(store.resolve("mt", manifest.version))


@pytest.fixture
def media(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(tmp_path / "still.png")
    write_video(tmp_path / "clip.mp4", (rng.integers(0, 255, (48, 80, 3), dtype=np.uint8) for _ in range(12)), fps=12)
    return tmp_path


def scan(media: Path, engine: LoadedEngine, config: JudgeConfig, tmp_path: Path) -> tuple[list, VerdictRepository]:
    url = f"sqlite:///{tmp_path / 'verdicts.db'}"
    upgrade_database(url)
    repository = VerdictRepository(make_database(url))
    return list(run_scan([media], engine, repository, config)), repository


def test_a_multitask_engine_states_its_classes_and_labels_fakes_by_manipulation(multitask, media, tmp_path):
    # Given the multi-task engine; When a folder is scanned without masks asked for
    results, repository = scan(media, multitask, CONFIG, tmp_path)
    # Then each verdict has probabilities over the three classes, summing to 1, a label that is a manipulation
    # (threshold 0), and no masks
    assert len(results) == 2
    for result in results:
        stored = repository.get(result.verdict_id)
        assert set(stored.class_probs) == {"real", "synthetic", "tampered"}
        assert sum(stored.class_probs.values()) == pytest.approx(1.0)
        assert stored.label == max(("synthetic", "tampered"), key=lambda c: stored.class_probs[c])
        assert stored.p_fake == pytest.approx(1 - stored.class_probs["real"], abs=1e-5)  # mean of 1 − P(real)
        assert stored.masks == ()


def test_masks_asked_for_are_stored_as_pngs_of_the_engine_input(multitask, media, tmp_path):
    # When the same folder is scanned asking for at most 2 masks per verdict
    results, repository = scan(media, multitask, replace(CONFIG, masks=True, max_masks=2), tmp_path)
    by_name = {r.path.name: repository.get(r.verdict_id) for r in results}
    # Then the video keeps its 2 most suspicious frames' masks, the image its one, as 64×64 8-bit PNGs
    assert [len(by_name["clip.mp4"].masks), len(by_name["still.png"].masks)] == [2, 1]
    for mask in by_name["clip.mp4"].masks + by_name["still.png"].masks:
        picture = Image.open(io.BytesIO(mask.png))
        assert (picture.mode, picture.size, (mask.width, mask.height)) == ("L", (64, 64), (64, 64))
    frames = {f.frame_index: f.p_fake for f in by_name["clip.mp4"].frames}
    kept = [m.frame_index for m in by_name["clip.mp4"].masks]
    assert [frames[i] for i in kept] == sorted(frames.values(), reverse=True)[:2]
