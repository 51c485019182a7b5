"""Hot reload: follow the engine store's ``current`` version and switch the daemon to a promoted engine.

A thread polls ``NAME/current``. A new version is loaded and warmed beside the engine that serves,
announced (``on_ready``: recorded in SQL, metrics), then swapped in with one reference assignment. Jobs
read ``current()`` when they start and keep that engine to the end — its preprocessing, face settings,
scores and verdict — so a switch falls between jobs: none is re-prepared, dropped or scored twice, and the
old engine is freed when the last job prepared for it is done. A version that cannot be loaded is refused
once (logged, remembered, not retried) and the serving engine stays.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import structlog

from deepsift.engines.backends import LoadedEngine
from deepsift.engines.errors import EngineError, RetryableError
from deepsift.engines.faces import MtcnnFaceDetector
from deepsift.engines.manifest import EngineManifest
from deepsift.engines.store import EngineStore

log = structlog.get_logger(__name__)

STOP_WAIT_S = 2.0  # a load in progress is not waited for longer; the thread ends after it
LOAD_RETRY_S = 60.0  # a version whose load failed for a reason other than the engine itself is retried after this

# Told about each engine before it serves: the new one, and the one it replaces (None at start-up).
OnReady = Callable[[LoadedEngine, LoadedEngine | None], None]


class EngineSource(Protocol):
    def current(self) -> LoadedEngine:
        """The engine new jobs are prepared for."""
        ...

    def stop(self) -> None:
        """Stop following promotions (the serving engine stays usable)."""
        ...


@dataclass(frozen=True)
class FixedEngine:
    """An engine source that never switches (benchmarks, tests)."""

    engine: LoadedEngine

    def current(self) -> LoadedEngine:
        return self.engine

    def stop(self) -> None:
        return


def warm_up(engine: LoadedEngine) -> None:
    """One batch through the engine, so the first job does not pay for lazy initialisation."""
    size = engine.manifest.input.size
    engine.logits(np.zeros((max(1, engine.manifest.batch.opt), 3, size, size), dtype=np.float32))


class EngineWatcher:
    """Serves the store's current version of engine ``name`` (or the pinned one) and follows promotions.

    ``poll_s`` 0 or a pinned version: the engine loaded at ``start`` serves until the end.
    """

    def __init__(
        self,
        store: EngineStore,
        name: str,
        load: Callable[[Path], LoadedEngine],
        on_ready: OnReady,
        poll_s: float = 5.0,
        pinned_version: int | None = None,
    ) -> None:
        self._store = store
        self._name = name
        self._load = load
        self._on_ready = on_ready
        self._poll_s = poll_s
        self._pinned = pinned_version
        self._engine: LoadedEngine | None = None
        self._version: int | None = None  # the store version serving (its folder, whatever the manifest says)
        self._pending: tuple[int, LoadedEngine] | None = None  # loaded, announcement postponed by an outage
        self._refused: set[int] = set()
        self._retry_at: dict[int, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def follows(self) -> bool:
        """Whether promotions are followed at all."""
        return self._pinned is None and self._poll_s > 0

    def start(self) -> EngineWatcher:
        """Load, warm and announce the engine to serve, then start following promotions.

        Raises ``EngineError`` when there is no such engine or it cannot be loaded: nothing would serve.
        """
        version = self._pinned if self._pinned is not None else self._store.current_version(self._name)
        engine = self._load(self._store.resolve(self._name, version))
        warm_up(engine)
        self._on_ready(engine, None)
        self._engine, self._version = engine, version
        log.info("engine_ready", engine=self._name, version=self._version, follows_promotions=self.follows)
        if self.follows:
            self._thread = threading.Thread(target=self._poll, name="engine-watch", daemon=True)
            self._thread.start()
        return self

    def current(self) -> LoadedEngine:
        engine = self._engine
        if engine is None:
            raise RuntimeError("the engine watcher has not started")
        return engine

    def stop(self) -> None:
        """Stop following promotions; the serving engine stays. Waits briefly for a load in progress."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(STOP_WAIT_S)

    def check(self) -> bool:
        """One look at the store: switch if ``current`` names a new version that loads; True when switched."""
        if not self.follows or self._stop.is_set():
            return False
        with self._lock:
            version = self._store.current_version(self._name)
            if version is None or version == self._version or version in self._refused:
                return False
            if time.monotonic() < self._retry_at.get(version, 0.0):
                return False
            candidate = self._candidate(version)
            return candidate is not None and self._switch(version, candidate)

    def _poll(self) -> None:
        while not self._stop.wait(self._poll_s):
            try:
                self.check()
            except Exception:  # a store that cannot be read now (a file system hiccup): look again later
                log.exception("engine_watch_failed", engine=self._name)

    def _candidate(self, version: int) -> LoadedEngine | None:
        """The loaded, warm engine of ``version``; None (refused and remembered) when it does not load."""
        if self._pending is not None and self._pending[0] == version:
            return self._pending[1]
        self._pending = None
        try:
            engine = self._load(self._store.path(self._name, version))
            warm_up(engine)
        except EngineError as e:  # the engine itself is wrong (manifest, hash, a plan for another GPU): for good
            self._refused.add(version)
            log.error("engine_refused", engine=self._name, version=version, serving_version=self._version,
                      error=str(e) or repr(e), error_type=type(e).__name__)  # fmt: skip
            return None
        except Exception as e:  # maybe passing (out of memory beside the serving engine): try again later
            self._retry_at[version] = time.monotonic() + LOAD_RETRY_S
            log.warning("engine_load_failed", engine=self._name, version=version, serving_version=self._version,
                        retry_in_s=LOAD_RETRY_S, error=str(e) or repr(e), error_type=type(e).__name__)  # fmt: skip
            return None
        return engine

    def _switch(self, version: int, engine: LoadedEngine) -> bool:
        """Announce ``engine``, then serve it; an outage postpones the switch to the next look."""
        old = self.current()
        if self._stop.is_set():  # stopped while the candidate loaded: serve nothing new
            return False
        try:
            self._on_ready(engine, old)
        except RetryableError as e:
            self._pending = (version, engine)
            log.warning("engine_switch_postponed", engine=self._name, version=version, error=str(e))
            return False
        except Exception as e:
            if self._stop.is_set():  # stopping: the announcement was abandoned, the switch does not matter
                return False
            self._retry_at[version] = time.monotonic() + LOAD_RETRY_S
            log.error("engine_switch_failed", engine=self._name, version=version, serving_version=self._version,
                      retry_in_s=LOAD_RETRY_S, error=str(e) or repr(e), error_type=type(e).__name__)  # fmt: skip
            return False
        self._engine, self._version, self._pending = engine, version, None
        log.info("engine_switched", engine=self._name, old_version=old.manifest.version,
                 new_version=engine.manifest.version, artifact_sha256=engine.manifest.artifact_sha256)  # fmt: skip
        return True


class FaceDetectors:
    """Face detectors by the confidence floor each engine asks for, built on first use.

    One per thread that detects (an MTCNN is not shared between threads); a switch to an engine with another
    ``min_face_confidence`` builds one more detector, and switching back reuses the first.
    """

    def __init__(self, device: str = "cpu", given: Iterable[MtcnnFaceDetector] = ()) -> None:
        self._device = device
        self._by_confidence = {d.min_confidence: d for d in given}

    def for_engine(self, manifest: EngineManifest) -> MtcnnFaceDetector | None:
        """The detector for ``manifest``'s input contract; None when the engine scores whole frames."""
        contract = manifest.input
        if contract.crop_mode != "face":
            return None
        floor = contract.min_face_confidence
        if floor not in self._by_confidence:
            self._by_confidence[floor] = MtcnnFaceDetector(min_confidence=floor, device=self._device)
        return self._by_confidence[floor]
