"""Hot reload: the watcher serves the store's current engine, switches to a promoted one only once it is
loaded, warm and announced, refuses a broken one without losing the old, and lets a switched-out engine go."""

from __future__ import annotations

import gc
import shutil
import time
import weakref
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from deepsift.daemon.engine_watch import EngineWatcher, FaceDetectors
from deepsift.daemon.pipeline import MediaJob, PreparedMedia
from deepsift.engines.backends import LoadedEngine, load_engine
from deepsift.engines.errors import EngineError, RetryableError
from deepsift.engines.manifest import EngineManifest
from deepsift.engines.store import EngineStore

NAME = "tiny-full"


@pytest.fixture
def store(full_frame_store: EngineStore, tmp_path: Path) -> EngineStore:
    """A private copy of the tiny engine store (v1 current), so promotions stay in this test."""
    shutil.copytree(full_frame_store.root, tmp_path / "engines", symlinks=True)
    return EngineStore(tmp_path / "engines")


def _add(store: EngineStore, **changes: object) -> int:
    """A new version of the tiny engine (same artifact, manifest ``changes``); returns its version."""
    v1 = store.path(NAME, 1)
    manifest = EngineManifest.read(v1)
    return store.add(manifest.model_copy(update=changes), v1 / manifest.artifact).version


class Announcements:
    """on_ready: what was announced, and what served at that moment."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int | None, int | None]] = []
        self.watcher: EngineWatcher | None = None
        self.outages = 0

    def __call__(self, engine: LoadedEngine, replacing: LoadedEngine | None) -> None:
        if self.outages:
            self.outages -= 1
            raise RetryableError("database unavailable")
        try:
            serving = self.watcher.current() if self.watcher else None
        except RuntimeError:  # not started yet
            serving = None
        self.calls.append(
            (
                engine.manifest.version,
                replacing.manifest.version if replacing else None,
                serving.manifest.version if serving else None,
            )
        )


def _watcher(store: EngineStore, poll_s: float = 60.0, pinned: int | None = None, loads: list[Path] | None = None):
    announced = Announcements()

    def load(path: Path) -> LoadedEngine:
        if loads is not None:
            loads.append(path)
        return load_engine(path, threads=1)

    watcher = EngineWatcher(store, NAME, load, announced, poll_s=poll_s, pinned_version=pinned)
    announced.watcher = watcher
    return watcher.start(), announced


def test_a_promoted_engine_is_announced_before_it_serves(store):
    # Given a watcher serving v1
    watcher, announced = _watcher(store)
    first = watcher.current()
    assert first.manifest.version == 1 and announced.calls == [(1, None, None)]
    # When v2 is added but not promoted, nothing changes
    _add(store, threshold=0.25)
    assert not watcher.check() and watcher.current() is first
    # When v2 is promoted
    store.promote(NAME, 2)
    # Then the next look switches to it, announced while v1 still served
    assert watcher.check()
    assert watcher.current().manifest.version == 2 and watcher.current().manifest.threshold == 0.25
    assert announced.calls[-1] == (2, 1, 1)
    assert not watcher.check()  # and it stays there
    watcher.stop()


def test_the_watcher_thread_follows_promotions_until_stopped(store):
    watcher, _ = _watcher(store, poll_s=0.05)
    _add(store)
    with capture_logs() as logs:
        store.promote(NAME, 2)
        deadline = time.monotonic() + 30
        while watcher.current().manifest.version != 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert watcher.current().manifest.version == 2
    assert [(e["old_version"], e["new_version"]) for e in logs if e["event"] == "engine_switched"] == [(1, 2)]
    # When stopped, a later promotion is not followed
    watcher.stop()
    store.promote(NAME, 1)
    time.sleep(0.2)
    assert watcher.current().manifest.version == 2


def test_a_broken_version_is_refused_once_and_the_old_engine_keeps_serving(store):
    # Given a watcher serving v1, and a promoted v2 whose artifact does not match its manifest's hash
    watcher, announced = _watcher(store)
    first = watcher.current()
    _add(store, artifact_sha256="0" * 64)
    store.promote(NAME, 2)
    # When the watcher looks several times
    with capture_logs() as logs:
        switched = [watcher.check() for _ in range(3)]
    # Then v2 is refused, logged once, never announced, and v1 still serves
    assert switched == [False, False, False] and watcher.current() is first
    refused = [e for e in logs if e["event"] == "engine_refused"]
    assert len(refused) == 1 and refused[0]["version"] == 2 and "sha256" in refused[0]["error"]
    assert announced.calls == [(1, None, None)]
    # And a good version promoted later is taken
    _add(store)
    store.promote(NAME, 3)
    assert watcher.check() and watcher.current().manifest.version == 3


@pytest.mark.parametrize(("pinned", "poll_s"), [(1, 0.05), (None, 0.0)], ids=["pinned", "poll-0"])
def test_a_pinned_version_or_no_polling_never_switches(store, pinned, poll_s):
    watcher, announced = _watcher(store, poll_s=poll_s, pinned=pinned)
    _add(store)
    store.promote(NAME, 2)
    time.sleep(0.3)
    assert not watcher.check()
    assert watcher.current().manifest.version == 1 and len(announced.calls) == 1 and not watcher.follows


def test_a_pinned_version_is_served_even_when_another_is_current(store):
    _add(store, threshold=0.25)
    watcher, _ = _watcher(store, pinned=2)
    assert watcher.current().manifest.threshold == 0.25 and store.current_version(NAME) == 1


def test_no_engine_to_serve_is_an_error_at_start(tmp_path):
    with pytest.raises(EngineError):
        EngineWatcher(EngineStore(tmp_path), NAME, load_engine, lambda e, r: None).start()


def test_an_outage_while_announcing_postpones_the_switch_without_loading_again(store):
    # Given a promoted v2 and a database that is down for the first announcement
    loads: list[Path] = []
    watcher, announced = _watcher(store, loads=loads)
    _add(store)
    store.promote(NAME, 2)
    announced.outages = 1
    # Then the first look keeps v1, the next one switches, and v2 was loaded once
    assert not watcher.check() and watcher.current().manifest.version == 1
    assert watcher.check() and watcher.current().manifest.version == 2
    assert loads == [store.path(NAME, 1), store.path(NAME, 2)]


def test_a_switched_out_engine_is_freed_when_its_last_job_is_done(store):
    # Given a job prepared for v1
    watcher, _ = _watcher(store)
    old = weakref.ref(watcher.current())
    job = PreparedMedia(MediaJob("j", "u"), None, None, engine=watcher.current())
    # When v2 takes over
    _add(store)
    store.promote(NAME, 2)
    assert watcher.check()
    gc.collect()
    # Then v1 lives while the job does, and no longer
    assert old() is job.engine
    del job
    gc.collect()
    assert old() is None


class _Detector:
    def __init__(self, min_confidence: float, device: str) -> None:
        self.min_confidence, self.device = min_confidence, device


def test_face_detectors_are_made_once_per_confidence_floor(monkeypatch, store):
    monkeypatch.setattr("deepsift.daemon.engine_watch.MtcnnFaceDetector", _Detector)
    full = EngineManifest.read(store.path(NAME, 1))

    def face(confidence: float) -> EngineManifest:
        contract = full.input.model_copy(update={"crop_mode": "face", "min_face_confidence": confidence})
        return full.model_copy(update={"input": contract})

    detectors = FaceDetectors("cpu")
    a, b, c = (detectors.for_engine(face(x)) for x in (0.9, 0.8, 0.9))
    assert a is c and a is not b and (a.min_confidence, b.min_confidence) == (0.9, 0.8)
    assert detectors.for_engine(full) is None


def test_a_load_that_fails_for_another_reason_than_the_engine_is_retried_later(store, monkeypatch):
    # Given a watcher serving v1, and v2 promoted while loading it runs out of memory once
    import deepsift.daemon.engine_watch as engine_watch

    watcher, _ = _watcher(store)
    _add(store)
    store.promote(NAME, 2)
    failures = iter([MemoryError("CUDA out of memory")])

    def flaky_load(path: Path) -> LoadedEngine:
        error = next(failures, None)
        if error is not None:
            raise error
        return load_engine(path, threads=1)

    watcher._load = flaky_load
    # When the watcher looks, v1 keeps serving and v2 is not refused for good
    with capture_logs() as logs:
        assert not watcher.check() and watcher.current().manifest.version == 1
    assert [e["event"] for e in logs] == ["engine_load_failed"]
    assert not watcher.check()  # not retried before its time
    # Then once the retry time has passed, v2 loads and serves
    real_monotonic = time.monotonic
    monkeypatch.setattr(engine_watch.time, "monotonic", lambda: real_monotonic() + engine_watch.LOAD_RETRY_S * 2)
    assert watcher.check() and watcher.current().manifest.version == 2
    watcher.stop()
