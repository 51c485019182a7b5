"""The engine manifest (JSON beside an artifact) and the versioned engine store with its atomic ``current`` link."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import multiprocessing
import os
import shutil
import stat
import threading
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from deepsift.engines.errors import EngineError
from deepsift.engines.manifest import (
    MANIFEST_FILE,
    BackendSpec,
    BatchRange,
    Calibration,
    EngineManifest,
    OutputSpec,
    sha256_file,
)
from deepsift.engines.preprocess import InputContract
from deepsift.engines.recipes import TaskSpec
from deepsift.engines.store import CURRENT, HISTORY_FILE, EngineStore


def make_manifest(name: str = "demo", **fields: object) -> EngineManifest:
    values: dict[str, object] = {
        "name": name,
        "recipe": "demo-tiny",
        "recipe_sha256": "ab" * 32,
        "detector": "siglip_binary",
        "task": TaskSpec(),
        "input": InputContract(size=64, resize_mode="longest_pad", mean=(0.1, 0.2, 0.3), color_order="BGR"),
        "backend": BackendSpec(name="onnxruntime", version="1.0", onnx_opset=18),
        "artifact": "model.onnx",
        "artifact_sha256": "cd" * 32,
        "weights_sha256": "ef" * 32,
        "calibration": Calibration(method="temperature", temperature=1.7),
        "evaluation": {"auc": 0.93, "n": 10, "split": "val"},
    }
    return EngineManifest(**(values | fields))


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not really onnx")
    return path


# --- manifest -------------------------------------------------------------------------------------------------


def test_a_manifest_survives_a_json_round_trip(tmp_path: Path) -> None:
    # Given a manifest with non-default values everywhere that matters
    manifest = make_manifest(threshold=0.42, batch=BatchRange(min=2, opt=8, max=16))

    # When it is written and read back
    path = manifest.write(tmp_path)
    again = EngineManifest.read(tmp_path)

    # Then it is equal, including the input contract and the build time, and the file is the documented name
    assert path == tmp_path / MANIFEST_FILE
    assert again == manifest
    assert again.input.resize_mode == "longest_pad" and again.input.color_order == "BGR"
    assert again.built_at == manifest.built_at and again.built_at.tzinfo is not None


@pytest.mark.parametrize("where", [None, "input", "backend", "batch", "calibration", "task"])
def test_a_manifest_with_an_unknown_key_is_rejected(tmp_path: Path, where: str | None) -> None:
    # Given a written manifest with an extra key at the top level or inside one section
    make_manifest().write(tmp_path)
    data = json.loads((tmp_path / MANIFEST_FILE).read_text())
    (data if where is None else data[where])["surprise"] = 1
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(data))

    # When it is read, then it is refused
    with pytest.raises(ValidationError, match="surprise"):
        EngineManifest.read(tmp_path)


def test_a_manifest_of_an_unknown_schema_version_is_rejected(tmp_path: Path) -> None:
    make_manifest().write(tmp_path)
    data = json.loads((tmp_path / MANIFEST_FILE).read_text()) | {"schema_version": 3}
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(ValidationError):
        EngineManifest.read(tmp_path)


def test_a_version_1_manifest_still_loads_with_its_output_name_as_the_fake_logit(tmp_path: Path) -> None:
    # Given a manifest as schema version 1 wrote it: one output, named by output_name
    make_manifest().write(tmp_path)
    data = json.loads((tmp_path / MANIFEST_FILE).read_text())
    del data["outputs"]
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(data | {"schema_version": 1, "output_name": "score"}))

    # When it is read, then the single output is the fake logit and nothing else is claimed
    manifest = EngineManifest.read(tmp_path)
    assert (manifest.schema_version, manifest.outputs.names()) == (1, ["score"])


def test_class_and_mask_outputs_must_match_the_task() -> None:
    with pytest.raises(ValidationError, match="multiclass"):
        make_manifest(outputs=OutputSpec(class_logits="class_logits"))
    with pytest.raises(ValidationError, match="masks"):
        make_manifest(outputs=OutputSpec(mask_logits="mask_logits"))


def test_isotonic_calibration_interpolates_its_knots_and_is_flat_beyond_them() -> None:
    calibration = Calibration(method="isotonic", logits=(-2.0, 0.0, 2.0), probabilities=(0.1, 0.3, 0.9))
    assert [calibration.p_fake(z) for z in (-5.0, -1.0, 1.0, 5.0)] == pytest.approx([0.1, 0.2, 0.6, 0.9])
    np.testing.assert_allclose(calibration.p_fake_array(np.array([-1.0, 1.0])), [0.2, 0.6])


@pytest.mark.parametrize(
    "knots",
    [{"logits": (0.0,), "probabilities": (0.5,)}, {"logits": (1.0, 0.0), "probabilities": (0.2, 0.4)},
     {"logits": (0.0, 1.0), "probabilities": (0.4, 0.2)}, {"logits": (0.0, 1.0), "probabilities": (0.4, 1.2)}],
)  # fmt: skip
def test_isotonic_calibration_refuses_knots_that_are_not_a_monotone_map(knots: dict) -> None:
    with pytest.raises(ValidationError):
        Calibration(method="isotonic", **knots)


def test_temperature_calibration_of_an_array_equals_the_scalar_form() -> None:
    calibration = Calibration(method="temperature", temperature=1.7)
    logits = np.array([-800.0, -3.0, 0.0, 2.5, 800.0])
    np.testing.assert_allclose(calibration.p_fake_array(logits), [calibration.p_fake(z) for z in logits], atol=1e-15)


@pytest.mark.parametrize(("lo", "opt", "hi"), [(4, 2, 8), (1, 9, 8), (0, 1, 1)])
def test_a_disordered_batch_range_is_rejected(lo: int, opt: int, hi: int) -> None:
    with pytest.raises(ValidationError):
        BatchRange(min=lo, opt=opt, max=hi)


@pytest.mark.parametrize("logit", [-3.0, -0.5, 0.0, 0.25, 2.0, 7.5])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_p_fake_is_the_sigmoid_of_the_tempered_logit(logit: float, temperature: float) -> None:
    # Given a temperature calibration, then p_fake is 1 / (1 + e^(−z/T)), computed here by hand
    expected = 1.0 / (1.0 + math.e ** (-logit / temperature))
    assert Calibration(method="temperature", temperature=temperature).p_fake(logit) == pytest.approx(
        expected, rel=1e-12
    )


def test_a_higher_temperature_pulls_p_fake_towards_one_half() -> None:
    sharp, soft = Calibration(temperature=1.0), Calibration(temperature=4.0)
    assert 0.5 < soft.p_fake(2.0) < sharp.p_fake(2.0)
    assert sharp.p_fake(-2.0) < soft.p_fake(-2.0) < 0.5


@pytest.mark.parametrize("logit", [-1e6, -800.0, -50.0, 50.0, 800.0, 1e6])
def test_p_fake_is_stable_for_large_logits(logit: float) -> None:
    # Given a logit whose naive exp() would overflow, then p_fake stays a finite probability on the right side
    p = Calibration().p_fake(logit)
    assert math.isfinite(p) and 0.0 <= p <= 1.0
    assert (p > 0.99) if logit > 0 else (p < 0.01)
    # and it agrees with 1 − p of the opposite logit
    assert p == pytest.approx(1.0 - Calibration().p_fake(-logit), abs=1e-15)


def test_p_fake_is_symmetric_and_monotone() -> None:
    calibration = Calibration(temperature=1.3)
    logits = [-10.0, -1.0, -0.1, 0.0, 0.1, 1.0, 10.0]
    ps = [calibration.p_fake(z) for z in logits]
    assert ps == sorted(ps) and len(set(ps)) == len(ps)
    assert calibration.p_fake(0.0) == 0.5


def test_sha256_file_hashes_the_bytes_in_chunks(tmp_path: Path) -> None:
    # Given a file larger than one chunk, then the chunked hash equals hashlib's of the whole content
    data = os.urandom(3000)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path, chunk=1024) == hashlib.sha256(data).hexdigest()


# --- store ----------------------------------------------------------------------------------------------------


def test_versions_count_up_from_one_and_each_holds_its_artifact_and_manifest(tmp_path: Path, artifact: Path) -> None:
    # Given an empty store
    store = EngineStore(tmp_path / "store")
    assert store.versions("demo") == [] and store.names() == []

    # When the same engine is added three times
    stored = [store.add(make_manifest(), artifact) for _ in range(3)]

    # Then the versions are 1, 2, 3, each folder holds the artifact and a manifest carrying its version
    assert [m.version for m in stored] == [1, 2, 3]
    assert store.versions("demo") == [1, 2, 3] and store.names() == ["demo"]
    for version in (1, 2, 3):
        folder = store.path("demo", version)
        assert folder.name == f"v{version:04d}"
        assert (folder / "model.onnx").read_bytes() == artifact.read_bytes()
        assert EngineManifest.read(folder).version == version
    # and adding does not promote
    assert store.current_version("demo") is None


def test_add_leaves_no_staging_folder_behind_even_when_it_fails(tmp_path: Path, artifact: Path) -> None:
    # Given a store with one version
    store = EngineStore(tmp_path / "store")
    store.add(make_manifest(), artifact)

    # When adding an artifact that does not exist fails
    with pytest.raises(FileNotFoundError):
        store.add(make_manifest(), tmp_path / "missing.onnx")

    # Then no version was created and nothing but v0001 is in the engine's folder
    assert store.versions("demo") == [1]
    assert [p.name for p in (tmp_path / "store" / "demo").iterdir()] == ["v0001"]


def test_a_stored_version_is_as_readable_as_its_engine_folder(tmp_path: Path, artifact: Path) -> None:
    # Given an engine folder made the ordinary way (umask applies), when a version is added
    store = EngineStore(tmp_path / "store")
    store.add(make_manifest(), artifact)

    # Then the version folder has the same permissions (the trainer and the daemon may run as different users)
    folder_mode = stat.S_IMODE((tmp_path / "store" / "demo").stat().st_mode)
    assert stat.S_IMODE(store.path("demo", 1).stat().st_mode) == folder_mode


def test_versions_ignore_stray_entries(tmp_path: Path, artifact: Path) -> None:
    # Given a store with v1 plus a staging leftover, a file, a badly named folder and the current link
    store = EngineStore(tmp_path / "store")
    store.add(make_manifest(), artifact)
    folder = tmp_path / "store" / "demo"
    (folder / ".staging-abc").mkdir()
    (folder / "v12").mkdir()
    (folder / "v0007").write_text("a file")
    store.promote("demo", 1)

    # Then only v1 is a version, and the next one is v2
    assert store.versions("demo") == [1]
    assert store.add(make_manifest(), artifact).version == 2


def test_current_follows_promote_and_rollback_by_promote(tmp_path: Path, artifact: Path) -> None:
    # Given two stored versions
    store = EngineStore(tmp_path / "store")
    store.add(make_manifest(), artifact)
    store.add(make_manifest(), artifact)

    # When v2 is promoted, current is v2; when v1 is promoted again (a rollback), current is v1
    store.promote("demo", 2)
    assert store.current_version("demo") == 2 and store.resolve("demo") == store.path("demo", 2)
    store.promote("demo", 1)
    assert store.current_version("demo") == 1 and store.resolve("demo") == store.path("demo", 1)
    assert EngineManifest.read(tmp_path / "store" / "demo" / CURRENT).version == 1

    # And an explicit version resolves regardless of current
    assert store.resolve("demo", 2) == store.path("demo", 2)


def test_resolve_without_current_raises(tmp_path: Path, artifact: Path) -> None:
    store = EngineStore(tmp_path / "store")
    with pytest.raises(EngineError, match="no current engine named 'demo'"):
        store.resolve("demo")
    store.add(make_manifest(), artifact)  # stored but never promoted
    with pytest.raises(EngineError, match="no current engine"):
        store.resolve("demo")


def test_resolve_of_a_missing_version_raises(tmp_path: Path, artifact: Path) -> None:
    store = EngineStore(tmp_path / "store")
    store.add(make_manifest(), artifact)
    with pytest.raises(EngineError, match="v5 is missing"):
        store.resolve("demo", 5)


def test_promote_of_a_missing_version_raises_and_keeps_current(tmp_path: Path, artifact: Path) -> None:
    # Given v1 current
    store = EngineStore(tmp_path / "store")
    store.add(make_manifest(), artifact)
    store.promote("demo", 1)

    # When a version that does not exist is promoted, then it is refused and current still points at v1
    with pytest.raises(EngineError, match="no version 3"):
        store.promote("demo", 3)
    with pytest.raises(EngineError):
        store.promote("other", 1)
    assert store.current_version("demo") == 1


def test_current_is_a_relative_symlink_so_the_store_can_move(tmp_path: Path, artifact: Path) -> None:
    # Given a promoted engine
    store = EngineStore(tmp_path / "store")
    store.add(make_manifest(), artifact)
    store.promote("demo", 1)

    # Then current is a symlink to the bare folder name, with no temporary link left beside it
    link = tmp_path / "store" / "demo" / CURRENT
    assert link.is_symlink() and os.readlink(link) == "v0001"
    assert sorted(p.name for p in link.parent.iterdir()) == [CURRENT, HISTORY_FILE, "v0001"]

    # And when the whole store is moved, current still resolves
    shutil.move(tmp_path / "store", tmp_path / "moved")
    moved = EngineStore(tmp_path / "moved")
    assert moved.resolve("demo") == tmp_path / "moved" / "demo" / "v0001"
    assert (tmp_path / "moved" / "demo" / CURRENT / "model.onnx").is_file()


def test_a_reader_never_sees_current_missing_while_promotions_run(tmp_path: Path, artifact: Path) -> None:
    # Given two versions and a thread that promotes them alternately
    store = EngineStore(tmp_path / "store")
    store.add(make_manifest(), artifact)
    store.add(make_manifest(), artifact)
    store.promote("demo", 1)
    done = threading.Event()
    errors: list[BaseException] = []

    def flip() -> None:  # enough rounds (~0.3 s) that an unlink-then-symlink promote is caught nearly every run
        try:
            for i in range(2000):
                store.promote("demo", 1 + i % 2)
        except BaseException as e:  # reported below, not lost in the thread
            errors.append(e)
        finally:
            done.set()

    # When the main thread reads current the whole time
    seen: set[int | None] = set()
    reads = 0
    thread = threading.Thread(target=flip)
    thread.start()
    while not done.is_set():
        try:
            seen.add(store.current_version("demo"))
        except FileNotFoundError:  # the link vanished between the check and the read
            seen.add(None)
        reads += 1
    thread.join()

    # Then every read found v1 or v2, never no engine
    assert not errors
    assert None not in seen and seen <= {1, 2} and reads > 0


def test_concurrent_promotions_in_one_process_do_not_trip_over_each_other(tmp_path: Path, artifact: Path) -> None:
    # Given two versions and two threads promoting different versions at the same time
    store = EngineStore(tmp_path / "store")
    store.add(make_manifest(), artifact)
    store.add(make_manifest(), artifact)
    errors: list[BaseException] = []

    def promote_many(version: int) -> None:
        try:
            for _ in range(200):
                store.promote("demo", version)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=promote_many, args=(v,)) for v in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Then neither failed, current is one of them, and no temporary link is left
    assert not errors
    assert store.current_version("demo") in (1, 2)
    assert sorted(p.name for p in (tmp_path / "store" / "demo").iterdir()) == [CURRENT, HISTORY_FILE, "v0001", "v0002"]


# --- store: promotion history and rollback ----------------------------------------------------------------------


def _store_with_versions(root: Path, artifact: Path, count: int) -> EngineStore:
    store = EngineStore(root)
    for _ in range(count):
        store.add(make_manifest(), artifact)
    return store


def test_each_promotion_appends_one_history_line(tmp_path: Path, artifact: Path, monkeypatch) -> None:
    # Given two versions and a known user, with no history yet
    monkeypatch.setenv("LOGNAME", "alice")
    store = _store_with_versions(tmp_path / "store", artifact, 2)
    assert store.history("demo") == [] and store.history("missing") == []

    # When v1 then v2 is promoted
    store.promote("demo", 1)
    store.promote("demo", 2, reason="better AUC")

    # Then the history holds one JSON line per promotion, oldest first, with the version it replaced
    lines = (tmp_path / "store" / "demo" / HISTORY_FILE).read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["reason"] == "better AUC"
    first, second = store.history("demo")
    assert (first.version, first.previous_version, first.reason) == (1, None, None)
    assert (second.version, second.previous_version, second.action) == (2, 1, "promote")
    assert second.user == "alice"
    assert datetime.fromisoformat(second.time).utcoffset() == timedelta(0)


def test_rollback_walks_back_through_earlier_promotions_and_records_itself(tmp_path: Path, artifact: Path) -> None:
    # Given v1, v2, v3 promoted in turn
    store = _store_with_versions(tmp_path / "store", artifact, 3)
    for version in (1, 2, 3):
        store.promote("demo", version)

    # When rolled back twice, then current walks back to v2 and then v1 (not back and forth between v3 and v2)
    assert store.rollback("demo") == 2 and store.current_version("demo") == 2
    assert store.rollback("demo") == 1 and store.current_version("demo") == 1

    # And each rollback is in the history, with reason "rollback"
    last = store.history("demo")[-1]
    assert (last.version, last.previous_version, last.action, last.reason) == (1, 2, "rollback", "rollback")

    # And with nothing earlier left, a further rollback is refused and current stays
    with pytest.raises(EngineError, match="no earlier promoted version"):
        store.rollback("demo")
    assert store.current_version("demo") == 1 and len(store.history("demo")) == 5


def test_rollback_returns_to_the_version_current_before_a_re_promotion(tmp_path: Path, artifact: Path) -> None:
    # Given v1, v2, then v1 again promoted (a manual rollback), then v3
    store = _store_with_versions(tmp_path / "store", artifact, 3)
    for version in (1, 2, 1, 3):
        store.promote("demo", version)

    # Then rollback goes to v1, then v2 (current before v1 was re-promoted), then v1
    assert [store.rollback("demo") for _ in range(3)] == [1, 2, 1]


def test_rollback_skips_versions_no_longer_in_the_store(tmp_path: Path, artifact: Path) -> None:
    # Given v1, v2, v3 promoted in turn and v2 deleted since
    store = _store_with_versions(tmp_path / "store", artifact, 3)
    for version in (1, 2, 3):
        store.promote("demo", version)
    shutil.rmtree(store.path("demo", 2))

    # When rolled back, then current is v1
    assert store.rollback("demo") == 1 and store.current_version("demo") == 1


def test_rollback_without_a_current_or_earlier_version_raises(tmp_path: Path, artifact: Path) -> None:
    # Given an unknown engine, a never-promoted one, and one promoted once
    store = _store_with_versions(tmp_path / "store", artifact, 2)
    with pytest.raises(EngineError, match="no engine named 'other'"):
        store.rollback("other")
    with pytest.raises(EngineError, match="no current engine named 'demo'"):
        store.rollback("demo")
    store.promote("demo", 2)

    # Then rolling back the single promotion is refused and changes nothing
    with pytest.raises(EngineError, match="v2 has no earlier"):
        store.rollback("demo")
    assert store.current_version("demo") == 2 and len(store.history("demo")) == 1


def test_rollback_reaches_the_version_current_before_the_history_began(tmp_path: Path, artifact: Path) -> None:
    # Given a store whose v1 became current before promotions were logged (no history file)
    store = _store_with_versions(tmp_path / "store", artifact, 2)
    store.promote("demo", 1)
    (store.root / "demo" / HISTORY_FILE).unlink()
    # When v2 is promoted (the first logged promotion) and then rolled back
    store.promote("demo", 2)
    # Then current is v1 again
    assert store.rollback("demo") == 1 and store.current_version("demo") == 1


def test_a_torn_history_line_is_skipped(tmp_path: Path, artifact: Path) -> None:
    # Given a history whose last line was cut short (a crash mid-write) and one with a foreign record
    store = _store_with_versions(tmp_path / "store", artifact, 2)
    store.promote("demo", 1)
    store.promote("demo", 2)
    with open(tmp_path / "store" / "demo" / HISTORY_FILE, "a") as f:
        f.write('["not a record"]\n{"version": 1, "previous_ver')

    # Then history holds the two whole records, and rollback still works
    assert [p.version for p in store.history("demo")] == [1, 2]
    assert store.rollback("demo") == 1


def _promote_alternately(root: Path, rounds: int) -> None:
    store = EngineStore(root)
    for i in range(rounds):
        store.promote("demo", 1 + i % 2)


def test_concurrent_promoting_processes_keep_the_history_whole_and_in_order(tmp_path: Path, artifact: Path) -> None:
    # Given two versions and three processes promoting them at the same time
    store = _store_with_versions(tmp_path / "store", artifact, 2)
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_promote_alternately, args=(store.root, 150)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)

    # Then every line is a whole record, and each names as previous the version the line before made current
    assert [w.exitcode for w in workers] == [0, 0, 0]
    lines = (tmp_path / "store" / "demo" / HISTORY_FILE).read_text().splitlines()
    history = store.history("demo")
    assert len(lines) == len(history) == 450
    assert all(b.previous_version == a.version for a, b in itertools.pairwise(history))
    assert history[-1].version == store.current_version("demo")


def test_a_misspelt_engine_name_lists_the_engines_and_the_closest(tmp_path: Path, artifact: Path) -> None:
    store = EngineStore(tmp_path / "store")
    with pytest.raises(EngineError, match="the store holds no engine"):
        store.resolve("demo")
    for name in ("demo", "siglip2-b16"):
        stored = store.add(make_manifest(name=name), artifact)
        store.promote(name, stored.version)
    with pytest.raises(EngineError, match=r"did you mean 'demo'\? engines there: demo, siglip2-b16"):
        store.resolve("demoo")
    with pytest.raises(EngineError, match=r"; engines there: demo, siglip2-b16$"):
        store.resolve("xyz")
