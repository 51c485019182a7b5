"""``daemon run`` start-up: health server first, then the database (schema checked), the engine (loaded
and warm) and the producer — waiting while a dependency is down — then the consumer loop until a signal.
"""

from __future__ import annotations

import signal

import numpy as np
import structlog

from daemon import notify
from daemon.db import make_engine, require_current_schema
from daemon.repository import VerdictRepository
from daemon.settings import Settings
from daemon.stream.consumer import kafka_call, make_producer
from daemon.stream.health import Health, HealthServer
from daemon.stream.metrics import StreamMetrics
from daemon.stream.retry import Abandoned, retry_forever
from daemon.stream.runner import Lifecycle, Services, StreamDaemon, Watch
from engines.backends import LoadedEngine, load_engine
from engines.errors import DeepsiftError
from engines.store import EngineStore

log = structlog.get_logger(__name__)


def warm_up(engine: LoadedEngine) -> None:
    """One batch through the engine, so the first job does not pay for lazy initialisation."""
    size = engine.manifest.input.size
    engine.logits(np.zeros((max(1, engine.manifest.batch.opt), 3, size, size), dtype=np.float32))


def start_services(settings: Settings, health: Health, metrics: StreamMetrics, lifecycle: Lifecycle) -> Services:
    """Database (schema checked), engine (loaded and warm), producer; waits while a dependency is down."""
    watch = Watch(health, metrics)
    notify.notify_status("connecting to the database")
    db = make_engine(settings.database_url)
    retry_forever(lambda: require_current_schema(db), dependency="database", stop=lifecycle.stopping, watch=watch)
    notify.notify_status("loading the engine")
    engine = load_engine(
        EngineStore(settings.engine_store).resolve(settings.engine_name, settings.engine_version),
        threads=settings.inference_threads,
    )
    warm_up(engine)
    health.engine_warm()
    metrics.engine.labels(name=engine.manifest.name, version=str(engine.manifest.version)).set(1)
    log.info("engine_ready", engine=engine.manifest.name, version=engine.manifest.version)
    producer = retry_forever(
        lambda: kafka_call(make_producer, settings), dependency="kafka", stop=lifecycle.stopping, watch=watch
    )
    return Services(settings, engine, VerdictRepository(db), producer, health, metrics, lifecycle)


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
