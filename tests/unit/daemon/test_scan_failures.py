"""``run_scan`` goes on past every per-file failure — a path that is no file, a verdict stage that raises, a
database that refuses one verdict or cannot be reached — and fails loudly when the scan itself breaks. A real
tiny ONNX Runtime engine, real media encoded by PyAV and Pillow, a real SQLite database underneath."""

from __future__ import annotations

import io
import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from deepsift.daemon.db import make_database, upgrade_database
from deepsift.daemon.paths import ScanEntry
from deepsift.daemon.pipeline import JudgeConfig, verdict
from deepsift.daemon.records import VerdictRecord
from deepsift.daemon.repository import SavedVerdict, VerdictRepository
from deepsift.daemon.scan import ScanFailed, exit_code, run_scan
from deepsift.daemon.sources.files import scan_job
from deepsift.daemon.stream import prepare as prepare_stage
from deepsift.daemon.table import VerdictTable
from deepsift.engines.aggregate import AggregationRule
from deepsift.engines.backends import LoadedEngine, load_engine
from deepsift.engines.errors import RetryableError
from deepsift.engines.media import write_video

pytestmark = pytest.mark.timeout(120)

CONFIG = JudgeConfig(
    frames_per_video=4,
    rule=AggregationRule.parse("mean"),
    min_track_fraction=0.1,
    decoder="pyav",
    max_media_bytes=10**8,
)


@pytest.fixture(scope="module")
def engine(full_frame_store) -> LoadedEngine:
    return load_engine(full_frame_store.resolve("tiny-full"))


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'verdicts.db'}"
    upgrade_database(url)
    db = make_database(url)
    yield db
    db.dispose()


@pytest.fixture
def repository(database: Engine) -> VerdictRepository:
    return VerdictRepository(database)


def _image(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(path)
    return path


def _clip(path: Path) -> Path:
    rng = np.random.default_rng(7)
    write_video(path, (rng.integers(0, 255, (48, 80, 3), dtype=np.uint8) for _ in range(8)), fps=8)
    return path


def _job_id(path: Path) -> str:
    return scan_job(ScanEntry(path))[0].job_id


class RefusingRepository(VerdictRepository):
    """The real repository, except that saving some jobs' verdicts fails as a database would make it fail."""

    def __init__(self, database: Engine, refused_once: str, refused: str, unreachable: str) -> None:
        super().__init__(database)
        self.refused_once, self.refused, self.unreachable = refused_once, refused, unreachable

    def save(self, record: VerdictRecord, shadows: Sequence[VerdictRecord] = ()) -> SavedVerdict:
        constraint = IntegrityError("INSERT INTO verdicts", {}, sqlite3.IntegrityError("CHECK constraint failed"))
        if record.job_id == self.unreachable:
            raise RetryableError("database unavailable: connection refused")
        if record.job_id == self.refused or (record.job_id == self.refused_once and record.code != "store_failed"):
            raise constraint
        return super().save(record, shadows)


def test_a_verdict_stage_that_raises_and_a_store_that_fails_cost_only_their_own_files(
    engine, database, repository, tmp_path
):
    # Given six media files, one of which makes the verdict stage raise, and three whose verdicts the database
    # refuses once (a stand-in can be stored), always, or cannot take (unreachable)
    media = tmp_path / "media"
    media.mkdir()
    names = ("a_good.png", "b_judge_raises.png", "c_refused_once.png", "d_refused.png", "e_unreachable.png")
    paths = [_image(media / n, seed) for seed, n in enumerate(names)] + [_clip(media / "f_good.mp4")]
    ids = {p.name: _job_id(p) for p in paths}

    def judge(prepared, scores, manifest, config):
        if prepared.job.job_id == ids["b_judge_raises.png"]:
            raise ZeroDivisionError("aggregation bug")
        return verdict(prepared, scores, manifest, config)

    refusing = RefusingRepository(database, ids["c_refused_once.png"], ids["d_refused.png"], ids["e_unreachable.png"])
    # When the folder is scanned
    results = list(run_scan([media], engine, refusing, CONFIG, judge=judge, outage_patience_s=0.5))
    # Then every file has one result, in order, and the good ones are judged and stored
    by_name = {r.path.name: r for r in results}
    assert [r.path.name for r in results] == [p.name for p in paths]
    for name in ("a_good.png", "f_good.mp4"):
        assert repository.get(by_name[name].verdict_id).status == "ok"
    # the file whose verdict raised has an internal_error verdict saying why
    stored = repository.get(by_name["b_judge_raises.png"].verdict_id)
    assert (stored.status, stored.code) == ("error", "internal_error") and "aggregation bug" in stored.detail
    # the refused verdict is replaced by a store_failed one, as the stream daemon does
    once = by_name["c_refused_once.png"]
    assert repository.get(once.verdict_id).code == "store_failed" and "CHECK constraint" in once.store_error
    # a verdict that cannot be stored at all is reported, as judged, and nothing is stored for it
    for name in ("d_refused.png", "e_unreachable.png"):
        lost = by_name[name]
        assert lost.verdict_id is None and lost.verdict.status == "ok" and lost.store_error
        assert repository.latest_for_job(ids[name]) is None
    # and the exit code says that verdicts were lost, while a verdict-stage bug alone is an error verdict
    assert exit_code(results) == 2
    assert exit_code([by_name["a_good.png"], by_name["b_judge_raises.png"]]) == 0
    # The table marks the lost verdicts and its footer counts them
    out = io.StringIO()
    table = VerdictTable(out)
    for result in results:
        table.row(result)
    table.footer(results)
    lines = out.getvalue().splitlines()
    assert lines[2].startswith("c_refused_once.png") and lines[2].endswith("store_failed")
    assert lines[3].startswith("d_refused.png") and lines[3].endswith("(not stored)")
    assert lines[-2] == "6 files: 2 error, 4 ok"
    assert lines[-1] == "3 verdicts could not be stored: 1 stored as store_failed, 2 not stored at all (see the log)"


@pytest.mark.timeout(60)
def test_paths_that_are_no_files_get_error_verdicts_between_judged_media(engine, repository, tmp_path):
    # Given good media before and after a symlink loop, a dangling link, a FIFO with a media suffix, and /dev/null
    media = tmp_path / "media"
    media.mkdir()
    _image(media / "a_first.png", 1)
    os.symlink("loop.mp4", media / "loop.mp4")
    os.symlink("gone.jpg", media / "dangling.jpg")
    os.mkfifo(media / "fifo.mp4")
    _clip(media / "z_last.mp4")
    # When they are scanned (no writer ever opens the FIFO: a scan that opened it would hang here)
    results = list(run_scan([media, Path("/dev/null"), media / "z_last.mp4"], engine, repository, CONFIG))
    # Then every path has exactly one stored verdict with its code, and the good files are judged
    got = [(r.path.name, repository.get(r.verdict_id).status, repository.get(r.verdict_id).code) for r in results]
    assert got == [
        ("a_first.png", "ok", None),
        ("dangling.jpg", "error", "not_found"),
        ("fifo.mp4", "error", "not_regular_file"),
        ("loop.mp4", "error", "symlink_loop"),
        ("z_last.mp4", "ok", None),
        ("null", "error", "not_regular_file"),
        ("z_last.mp4", "ok", None),
    ]
    # named twice: one verdict, stored by one of the two (two prepare workers may judge both at once)
    assert (
        results[4].verdict_id == results[-1].verdict_id and [results[4].created, results[-1].created].count(True) == 1
    )
    assert exit_code(results) == 2
    out = io.StringIO()
    VerdictTable(out).footer(results)
    assert out.getvalue().splitlines() == [
        "7 files: 4 error, 3 ok",
        "4 paths could not be read as files: 1 not_found, 2 not_regular_file, 1 symlink_loop",
    ]


def test_a_prepare_worker_that_breaks_fails_the_scan_instead_of_ending_it_early(engine, repository, tmp_path):
    # Given a bad entry that breaks the walk itself (not one file: os.stat(None) is a TypeError, no OSError)
    first, never = _image(tmp_path / "first.png", 1), _image(tmp_path / "never.png", 2)
    results = []
    # When it is scanned, the scan raises once what came before is stored, and says so
    with pytest.raises(ScanFailed, match=r"listing the paths broke .TypeError.*not judged"):
        for result in run_scan([first, None, never], engine, repository, CONFIG):
            results.append(result)
    assert [r.path.name for r in results] == ["first.png"]
    assert repository.latest_for_job(_job_id(never)) is None


def test_a_job_whose_preparation_raises_gets_an_internal_error_and_the_scan_goes_on(
    engine, repository, tmp_path, monkeypatch
):
    # Given three files, the second of which makes the prepare stage raise (a decoder bug, not bad media)
    paths = [_image(tmp_path / f"{name}.png", seed) for seed, name in enumerate("abc")]
    real_prepare = prepare_stage.prepare

    def prepare(media, manifest, detector, config, reuse=None, shadows=()):
        if media.path.name == "b.png":
            raise RuntimeError("decoder bug")
        return real_prepare(media, manifest, detector, config, reuse, shadows)

    monkeypatch.setattr(prepare_stage, "prepare", prepare)
    # When they are scanned, each has its verdict, in order, and the bug is the second one's internal_error
    results = list(run_scan(paths, engine, repository, CONFIG))
    assert [(r.path.name, r.verdict.status) for r in results] == [("a.png", "ok"), ("b.png", "error"), ("c.png", "ok")]
    stored = repository.get(results[1].verdict_id)
    assert stored.code == "internal_error" and "decoder bug" in stored.detail
    assert exit_code(results) == 0


class StageBug(BaseException):
    """Escapes every per-job handler (they catch ``Exception``): the stage itself dies."""


def test_a_stage_that_dies_fails_the_scan_instead_of_ending_it_quietly(engine, repository, tmp_path):
    first, second = _image(tmp_path / "a.png", 1), _image(tmp_path / "b.png", 2)

    def judge(prepared, scores, manifest, config):
        if prepared.job.path.name == "b.png":
            raise StageBug("the batching thread is gone")
        return verdict(prepared, scores, manifest, config)

    # When they are scanned, the scan raises (it does not end as if every file were done) and b.png has no verdict
    with pytest.raises(ScanFailed, match="stage crashed"):
        list(run_scan([first, second], engine, repository, CONFIG, judge=judge))
    assert repository.latest_for_job(_job_id(second)) is None
