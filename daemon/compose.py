"""The composition root of ``daemon scan`` and ``daemon run``: what both commands run on, built in one place.

``build_services`` makes the database (schema checked), the verdict repository, the engine watcher (the
serving engine loaded, warm, recorded in SQL with the store's promotion history, followed for promotions), the
shadow engines, the decoder (DALI's worker started up front when it is chosen, so a broken GPU set-up fails at
start, not on the first video), the judge configuration and the face detectors, and hands them to the pipeline
loop with the command's result sink.
``daemon run`` waits while a dependency is down (``wait``); ``daemon scan`` fails at once instead (exit 1).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog

from deepsift.daemon.db import DbTimeouts, make_database, require_current_schema
from deepsift.daemon.engine_watch import EngineWatcher, FaceDetectors, warm_up
from deepsift.daemon.pipeline.shadow import check_shadow
from deepsift.daemon.promotions import PromotionLog, record_serving, replica_id
from deepsift.daemon.repository import VerdictRepository
from deepsift.daemon.runtime import engine_loader, judge_config, start_decoder
from deepsift.daemon.settings import Settings, engine_ref
from deepsift.daemon.stream.health import Health
from deepsift.daemon.stream.metrics import StreamMetrics
from deepsift.daemon.stream.retry import retry_forever
from deepsift.daemon.stream.runner import Lifecycle, Services, Watch
from deepsift.daemon.stream.sink import ResultSink
from deepsift.engines.backends import LoadedEngine
from deepsift.engines.manifest import EngineManifest
from deepsift.engines.store import EngineStore

log = structlog.get_logger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Dependencies:
    """How the start-up treats a dependency that is down: wait (``daemon run``) or fail (``daemon scan``)."""

    watch: Watch
    stop: threading.Event
    wait: bool

    def call(self, operation: Callable[[], T], dependency: str) -> T:
        if not self.wait:
            return operation()
        return retry_forever(operation, dependency=dependency, stop=self.stop, watch=self.watch)


def build_services(
    settings: Settings,
    sink: Callable[[Watch], ResultSink],
    *,
    health: Health | None = None,
    metrics: StreamMetrics | None = None,
    lifecycle: Lifecycle | None = None,
    wait: bool = False,
    probes: Callable[[threading.Event], None] | None = None,
) -> Services:
    """Everything the pipeline loop runs on; the engine watcher is stopped again if a later part fails."""
    health, metrics, lifecycle = health or Health(), metrics or StreamMetrics(), lifecycle or Lifecycle()
    deps = Dependencies(Watch(health, metrics), lifecycle.stopping, wait)
    repository = open_repository(settings, deps)
    engines = open_engines(settings, repository, metrics, deps)
    health.engine_warm()
    try:
        shadows = open_shadows(settings, engines.current().manifest, repository, deps)
        detectors = detector_factory(settings, engines)
        detectors()  # a detector that cannot be built on this device fails the start, not every job
        config = judge_config(settings, start_decoder(settings))
        result_sink = sink(deps.watch)
    except BaseException:
        engines.stop()
        raise
    return Services(settings, engines, repository, result_sink, health, metrics, lifecycle, config, detectors,
                    probes=probes, shadows=shadows)  # fmt: skip


def open_repository(settings: Settings, deps: Dependencies) -> VerdictRepository:
    """The verdict repository on a database whose schema is at the head revision."""
    db = make_database(settings.database_url, DbTimeouts.from_settings(settings))
    deps.call(lambda: require_current_schema(db), "database")
    return VerdictRepository(db)


def open_engines(
    settings: Settings, repository: VerdictRepository, metrics: StreamMetrics, deps: Dependencies
) -> EngineWatcher:
    """The serving engine, loaded and warm, followed for promotions; each engine is recorded before it serves,
    with the store's promotion history and this replica's switch (``daemon.promotions``)."""
    store, promotions, replica = EngineStore(settings.engine_store), PromotionLog(repository.engine), replica_id()

    def announce(engine: LoadedEngine, replacing: LoadedEngine | None) -> None:
        manifest = engine.manifest
        previous = replacing.manifest.version if replacing is not None else None
        deps.call(lambda: repository.record_engine(manifest), "database")
        deps.call(
            lambda: record_serving(promotions, store, settings.engine_name, manifest.version, previous, replica),
            "database",
        )
        if replacing is not None:
            metrics.engine.labels(name=replacing.manifest.name, version=str(replacing.manifest.version)).set(0)
        metrics.engine.labels(name=manifest.name, version=str(manifest.version)).set(1)

    return EngineWatcher(
        store,
        settings.engine_name,
        load=engine_loader(settings),
        on_ready=announce,
        poll_s=settings.engine_poll_s,
        pinned_version=settings.engine_version,
    ).start()


def open_shadows(
    settings: Settings, serving: EngineManifest, repository: VerdictRepository, deps: Dependencies
) -> tuple[LoadedEngine, ...]:
    """The shadow engines (``pipeline.shadow``), loaded, warm and recorded in SQL; each must cut the serving
    engine's regions. Their versions are fixed for the daemon's life (the current one when it starts, or pinned)."""
    store, load, shadows = EngineStore(settings.engine_store), engine_loader(settings), []
    for text in settings.shadow_engines:
        name, version = engine_ref(text)
        engine = load(store.resolve(name, version))
        check_shadow(engine.manifest, serving)
        warm_up(engine)
        deps.call(lambda m=engine.manifest: repository.record_engine(m), "database")
        log.info("shadow_engine", name=engine.manifest.name, version=engine.manifest.version)
        shadows.append(engine)
    return tuple(shadows)


def detector_factory(settings: Settings, engines: EngineWatcher) -> Callable[[], FaceDetectors]:
    """One prepare worker's face detectors (an MTCNN is not shared between threads), the serving engine's built
    now rather than on the first job."""

    def make() -> FaceDetectors:
        detectors = FaceDetectors(settings.device)
        detectors.for_engine(engines.current().manifest)
        return detectors

    return make
