"""Hostile media through `daemon scan` and `daemon run`: one verdict per file, the process alive, memory bounded.

The corpus (``tests/hostile_media.py``) holds decompression bombs, frames and photos above the pixel budgets,
legitimate 4K/8K media that must be judged inside the frame budget, tiny and odd formats, broken files, and
paths that are no readable file (a symlink loop, a FIFO, a dangling link). Peak RSS is measured on the child
process: ``ru_maxrss`` through a small launcher for `daemon scan`, ``VmHWM`` for the long-running `daemon run`.

The ceiling asserted is the one the budgets imply (``MemoryCeiling``) for the largest media the corpus admits
(4096² video frames, an 8K photo); with the default settings on 2 CPUs, for one `daemon scan` process:
  runtime 1280 MiB (Python, the CUDA build of torch, ONNX Runtime, MTCNN: a scan of one small image measures
  ~1085) + the demo engine, 3 × its files (5)
  + one job prepared at a time (one prepare thread; the prefetch queue holds preprocessed crops only):
    job_frame_budget_mb 1024 of kept frames + face crops cut from them (≤ half of it: 512)
    + the decoder's own frames at the source size: 16 H.264 references + (CPUs + 1) frame threads + 2,
      YUV 4:2:0 at 4096² (504)
  + one MTCNN pass over at most 7.4 Mpx at 64 bytes a pixel (450)
  = 3775 MiB. `daemon run` prepares prepare_workers (2) jobs at once: it gets the per-job share twice.
Without the budgets the corpus costs far more: the 13000² JPEG alone is 1.3 GB through PIL, the PNG bomb gigabytes,
24 frames of 4096² 1.2 GB plus MTCNN on 17 Mpx frames. A process tree that passes 1.25 × its ceiling is
killed, so a budget that does not hold fails the test without taking the shared machine with it.
"""

from __future__ import annotations

import os
import sys
import urllib.parse
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import text

from deepsift.daemon.db import make_database, upgrade_database
from deepsift.daemon.settings import Settings
from deepsift.engines.store import EngineStore
from tests.hostile_media import (
    LARGEST_FRAME_PIXELS,
    LARGEST_IMAGE_PIXELS,
    Budgets,
    Expected,
    Measured,
    MemoryCeiling,
    TreeWatch,
    measure,
    runtime_and_engine_mib,
    tree_peak_mib,
    write_corpus,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAEMON = Path(sys.executable).parent / "daemon"
GUARD = 1.25  # × the ceiling: the process tree is killed above this
# Media refused from its header costs what the process costs without media (``runtime_and_engine_mib``, itself
# ~200 MiB above what it measures) plus allocator noise. 256 MiB is a fifth of what decoding the smallest bomb
# here through PIL would take (the 13000² JPEG: 8 bytes × 169 Mpx).
HEADER_ONLY_MIB = 256
REFUSED_FROM_HEADER = ("too_many_pixels", "too_long", "too_small")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Expected]]:
    folder = tmp_path_factory.mktemp("hostile") / "corpus"
    return folder, write_corpus(folder)


def _ceiling(store: EngineStore, jobs_at_once: int, **settings: object) -> MemoryCeiling:
    """The ceiling the budgets of these settings imply for the largest media the corpus admits."""
    budgets = Budgets.from_settings(Settings(**settings))
    fixed = runtime_and_engine_mib(store.resolve("demo"))
    return MemoryCeiling.of(
        budgets, fixed, jobs_at_once, frame_pixels=LARGEST_FRAME_PIXELS, image_pixels=LARGEST_IMAGE_PIXELS
    )


def _scan(
    store: EngineStore, workdir: Path, *paths: Path, guard_mib: float, **settings: str
) -> tuple[Measured, dict[str, list[dict]]]:
    """`daemon scan PATHS` on a fresh SQLite database, measured; the verdicts it stored, by file name."""
    url = f"sqlite:///{workdir / 'scan.db'}"
    upgrade_database(url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPSIFT_")}
    env.update(DEEPSIFT_DATABASE_URL=url, DEEPSIFT_ENGINE_STORE=str(store.root), DEEPSIFT_ENGINE_NAME="demo")
    env.update({f"DEEPSIFT_{name.upper()}": value for name, value in settings.items()})
    result = measure([str(DAEMON), "scan", *map(str, paths)], env, guard_mib=guard_mib, timeout=420)
    return result, _verdicts_by_name(url)


def _verdicts_by_name(url: str) -> dict[str, list[dict]]:
    """Every stored verdict, by the file name its media URI ends in."""
    query = text("SELECT media_uri, status, code, detail, frames_sampled FROM verdicts ORDER BY id")
    engine = make_database(url)
    try:
        with engine.connect() as c:
            found: dict[str, list[dict]] = {}
            for row in c.execute(query).mappings():
                found.setdefault(_name(row["media_uri"]), []).append(dict(row))
            return found
    finally:
        engine.dispose()


def _name(uri: str) -> str:
    name = urllib.parse.unquote(uri.rsplit("/", 1)[-1])
    return "dangling.jpg" if name == "gone.jpg" else name  # the dangling link may be named by its target


def _mismatches(expected: dict[str, Expected], got: dict[str, dict]) -> dict[str, str]:
    """Entries whose verdict is not the one expected, with both."""
    return {
        name: f"want {want.describe()}, got {got[name]['status']} {got[name]['code']} ({got[name]['detail']})"
        for name, want in expected.items()
        if name in got and not want.matches(got[name]["status"], got[name]["code"])
    }


def test_scan_of_the_hostile_corpus_gives_one_verdict_each_within_the_memory_ceiling(demo_store, corpus, tmp_path):
    # Given the hostile corpus in one folder, and the ceiling the default budgets imply for one scan process
    folder, expected = corpus
    ceiling = _ceiling(demo_store, jobs_at_once=1)
    # When `daemon scan` judges the folder
    result, verdicts = _scan(demo_store, tmp_path, folder, guard_mib=GUARD * ceiling.total_mib)
    # Then it ran to its end, and exits 2: some paths could not be read (the loop, the FIFO, the dangling link)
    assert not result.killed, f"passed {GUARD} × the ceiling {ceiling.explain()}: {result}"
    assert any(want.path_problem for want in expected.values())
    assert result.returncode == 2, result
    # with exactly one verdict per entry, and none for anything else
    counts = Counter({name: len(rows) for name, rows in verdicts.items()})
    assert counts == Counter(dict.fromkeys(expected, 1)), result.stderr[-3000:]
    # each the one it must get: legitimate large media judged, bombs refused with their code
    assert _mismatches(expected, {name: rows[0] for name, rows in verdicts.items()}) == {}
    # and the whole scan stayed under the ceiling
    assert result.peak_mib < ceiling.total_mib, f"peak {result.peak_mib:.0f} MiB > ceiling {ceiling.explain()}"


def test_bombs_are_refused_from_their_header_at_the_cost_of_no_media(demo_store, corpus, tmp_path):
    # Given the entries to be refused for their size or length (the 13000² JPEG, the PNG and GIF bombs, 6400²
    # H.264 frames, a 3-hour clip, a 1×1 image), scanned without the rest of the corpus
    folder, expected = corpus
    bombs = {name: want for name, want in expected.items() if want.code in REFUSED_FROM_HEADER}
    assert {"jpeg_13000x13000.jpg", "png_bomb_30000x30000.png", "h264_6400x6400.mp4"} <= set(bombs)
    no_media = runtime_and_engine_mib(demo_store.resolve("demo"))
    # When they are scanned
    result, verdicts = _scan(demo_store, tmp_path, *(folder / n for n in bombs), guard_mib=no_media + 2048)
    # Then each is refused with its code
    assert not result.killed and result.returncode == 0, result
    assert {name: len(rows) for name, rows in verdicts.items()} == dict.fromkeys(bombs, 1)
    assert _mismatches(bombs, {name: rows[0] for name, rows in verdicts.items()}) == {}
    # and none was decoded: the scan cost what the process costs without media
    assert result.peak_mib < no_media + HEADER_ONLY_MIB, f"{result.peak_mib:.0f} MiB, without media {no_media:.0f}"


def test_large_media_is_judged_within_the_smallest_frame_budget(demo_store, corpus, tmp_path):
    # Given 24 frames of 4096² (1.2 GB as RGB) and an 8K photo (100 MB), and the smallest frame budget, 16 MiB:
    # all 24 frames must be kept, downscaled to fit, and the photo decoded smaller
    folder, expected = corpus
    names = ["h264_4096x4096.mp4", "photo_7680x4320.jpg"]
    ceiling = _ceiling(demo_store, jobs_at_once=1, job_frame_budget_mb=16)
    # When they are scanned with that budget
    result, verdicts = _scan(
        demo_store,
        tmp_path,
        *(folder / n for n in names),
        guard_mib=GUARD * ceiling.total_mib,
        job_frame_budget_mb="16",
    )
    # Then both are judged, the video from every frame sampled
    assert not result.killed and result.returncode == 0, result
    assert _mismatches({n: expected[n] for n in names}, {n: rows[0] for n, rows in verdicts.items()}) == {}
    assert verdicts["h264_4096x4096.mp4"][0]["frames_sampled"] == 24
    # costing at most that budget, its crops, the decoder's frames at full size and one detection pass
    # (kept at full size the frames alone are 1.2 GB, their face crops 0.5 GB more)
    assert result.peak_mib < ceiling.total_mib, f"peak {result.peak_mib:.0f} MiB > ceiling {ceiling.explain()}"


def test_run_judges_a_job_per_hostile_file_and_stays_alive_within_the_memory_ceiling(
    postgres_url, stream_setup, start_daemon, demo_store, corpus
):
    # Given a daemon serving the demo engine with the corpus as its media root, 8 frames a video and a 256 MiB
    # frame budget (8 frames of 4096² are 400 MB: still above it), under the ceiling for prepare_workers jobs
    folder, expected = corpus
    budget_mb, frames = 256, 8
    stream = stream_setup(
        postgres_url,
        DEEPSIFT_MEDIA_ROOTS=str(folder),
        DEEPSIFT_ENGINE_STORE=str(demo_store.root),
        DEEPSIFT_ENGINE_NAME="demo",
        DEEPSIFT_FRAMES_PER_VIDEO=str(frames),
        DEEPSIFT_JOB_FRAME_BUDGET_MB=str(budget_mb),
    )
    workers = Settings().prepare_workers
    ceiling = _ceiling(demo_store, jobs_at_once=workers, job_frame_budget_mb=budget_mb, frames_per_video=frames)
    daemon = start_daemon(stream.settings)
    daemon.wait_ready()
    with TreeWatch(daemon.process.pid, GUARD * ceiling.total_mib).in_background() as watch:
        # When a job for every corpus entry arrives, and one asking more frames than a job may have
        jobs = {_job_id(stream, i, name): folder / name for i, name in enumerate(expected)}
        want = {job_id: expected[path.name] for job_id, path in jobs.items()}
        greedy = _job_id(stream, len(jobs), "greedy")
        want[greedy] = Expected("too_many_frames", "frames 129 > max_frames_per_job 128")
        values = [_job(job_id, path) for job_id, path in jobs.items()]
        values.append(_job(greedy, folder / "small_320x240.mp4", frames=129))
        stream.broker.produce(stream.topic, values, partitions=stream.partitions)
        ids = list(want)

        def all_judged_or_dead() -> bool:
            return daemon.process.poll() is not None or len({v["job_id"] for v in stream.verdicts(ids)}) == len(ids)

        # Then every job gets exactly one verdict, the one it must get
        stream.wait(all_judged_or_dead, 300, f"{len(ids)} verdicts (or the daemon's death)")
        assert daemon.process.poll() is None, f"the daemon died (guard: {watch.killed}):\n{daemon.log()[-4000:]}"
        rows = stream.verdicts(ids)
        assert Counter(v["job_id"] for v in rows) == Counter(dict.fromkeys(ids, 1))
        assert _mismatches(want, {v["job_id"]: v for v in rows}) == {}
        # and the group went on past them: every offset committed, and a job sent afterwards judged
        stream.wait(lambda: _committed(stream) == len(ids), 60, f"{len(ids)} committed offsets")
        after = _job_id(stream, len(ids), "after")
        stream.broker.produce(stream.topic, [_job(after, folder / "cmyk.jpg")])
        stream.wait(lambda: stream.verdicts([after]), 60, "a verdict for the job sent after the corpus")
        assert stream.verdicts([after])[0]["status"] in ("ok", "abstained")
        peak = max(tree_peak_mib(daemon.process.pid), watch.peak_mib)
    # with the daemon alive and ready, and its peak memory under the ceiling
    assert daemon.process.poll() is None and daemon.ready()
    assert peak < ceiling.total_mib, f"peak {peak:.0f} MiB > ceiling {ceiling.explain()}"


def _job_id(stream, index: int, name: str) -> str:
    return f"{stream.group}-{index:03d}-{name}"


def _job(job_id: str, path: Path, **options) -> bytes:
    from deepsift.daemon.stream.jobs import encode_job, new_job

    return encode_job(new_job(job_id, path.as_uri(), **options))


def _committed(stream) -> int:
    return sum(o or 0 for o in stream.broker.committed(stream.group, stream.topic, stream.partitions).values())
