"""``daemon run`` start-up: health server first, then the database (schema checked), the engine (loaded,
warm, recorded, and followed for promotions) and the producer — waiting while a dependency is down — then
the consumer loop until a signal.
"""

from __future__ import annotations

import signal
import threading

import structlog

from deepsift.daemon import notify
from deepsift.daemon.db import DbTimeouts, make_database, require_current_schema
from deepsift.daemon.engine_watch import EngineWatcher
from deepsift.daemon.repository import VerdictRepository
from deepsift.daemon.runtime import engine_loader, start_decoder
from deepsift.daemon.settings import Settings
from deepsift.daemon.stream.consumer import kafka_call, make_producer
from deepsift.daemon.stream.health import Health, HealthServer
from deepsift.daemon.stream.metrics import StreamMetrics
from deepsift.daemon.stream.retry import Abandoned, DependencyWatch, retry_forever
from deepsift.daemon.stream.runner import Lifecycle, Services, StreamDaemon, Watch
from deepsift.engines.backends import LoadedEngine
from deepsift.engines.errors import DeepsiftError
from deepsift.engines.store import EngineStore

log = structlog.get_logger(__name__)


def announce_engine(
    engine: LoadedEngine,
    replacing: LoadedEngine | None,
    repository: VerdictRepository,
    metrics: StreamMetrics,
    watch: DependencyWatch,
    stop: threading.Event,
) -> None:
    """Before an engine serves: record it in SQL (waiting while the database is down) and in the info gauge."""
    manifest = engine.manifest
    retry_forever(lambda: repository.record_engine(manifest), dependency="database", stop=stop, watch=watch)
    if replacing is not None:
        metrics.engine.labels(name=replacing.manifest.name, version=str(replacing.manifest.version)).set(0)
    metrics.engine.labels(name=manifest.name, version=str(manifest.version)).set(1)


def start_services(settings: Settings, health: Health, metrics: StreamMetrics, lifecycle: Lifecycle) -> Services:
    """Database (schema checked), engine (loaded, warm, followed), producer; waits while a dependency is down."""
    watch = Watch(health, metrics)
    notify.notify_status("connecting to the database")
    db = make_database(settings.database_url, DbTimeouts.from_settings(settings))
    retry_forever(lambda: require_current_schema(db), dependency="database", stop=lifecycle.stopping, watch=watch)
    repository = VerdictRepository(db)
    notify.notify_status("loading the engine")
    engines = EngineWatcher(
        EngineStore(settings.engine_store),
        settings.engine_name,
        load=engine_loader(settings),
        on_ready=lambda engine, replacing: announce_engine(
            engine, replacing, repository, metrics, watch, lifecycle.stopping
        ),
        poll_s=settings.engine_poll_s,
        pinned_version=settings.engine_version,
    ).start()
    health.engine_warm()
    try:
        producer = retry_forever(
            lambda: kafka_call(make_producer, settings), dependency="kafka", stop=lifecycle.stopping, watch=watch
        )
    except BaseException:
        engines.stop()
        raise
    try:
        decoder = start_decoder(settings)
    except BaseException:
        engines.stop()
        raise
    return Services(settings, engines, repository, producer, health, metrics, lifecycle, decoder)


def run_stream(settings: Settings) -> int:
    """The ``daemon run`` service: exit 0 after a drain, 1 when it cannot start or a stage crashed."""
    lifecycle, health, metrics = Lifecycle(), Health(), StreamMetrics()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lifecycle.request_stop)
    server = HealthServer(health, metrics.render, settings.health_host, settings.health_port).start()
    log.info("health_listening", host=settings.health_host, port=server.port)
    try:
        services = start_services(settings, health, metrics, lifecycle)
        return StreamDaemon(services).run()
    except Abandoned:
        log.info("stopped_before_start")
        return 0
    except DeepsiftError:
        raise  # the command line reports it (no engine, schema not migrated)
    except Exception:
        log.exception("daemon_crashed")
        return 1
    finally:
        server.close()
