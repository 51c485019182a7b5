"""``daemon run`` start-up: health server first, then what ``daemon.compose`` builds (database, engine, decoder,
detectors — waiting while a dependency is down) with the Kafka sink, then the pipeline loop over the ``kafka``
source until a signal.
"""

from __future__ import annotations

import signal
from functools import partial

import structlog

from deepsift.daemon import notify
from deepsift.daemon.compose import build_services
from deepsift.daemon.settings import Settings
from deepsift.daemon.sources.base import SOURCES, SourceRequest
from deepsift.daemon.stream.health import Health, HealthServer, Pages
from deepsift.daemon.stream.metrics import StreamMetrics
from deepsift.daemon.stream.probes import watch_dependencies
from deepsift.daemon.stream.retry import Abandoned, retry_forever
from deepsift.daemon.stream.runner import Lifecycle, PipelineLoop, Services, Watch
from deepsift.daemon.stream.sink import ResultSink
from deepsift.engines.errors import DeepsiftError

log = structlog.get_logger(__name__)


def kafka_sink(settings: Settings, metrics: StreamMetrics, lifecycle: Lifecycle, watch: Watch) -> ResultSink:
    """Dead letters and result events through a producer of their own, made once the broker answers."""
    from deepsift.daemon.broker.client import kafka_call, make_producer
    from deepsift.daemon.broker.sink import KafkaSink

    producer = retry_forever(
        lambda: kafka_call(make_producer, settings), dependency="kafka", stop=lifecycle.stopping, watch=watch
    )
    return KafkaSink(producer, settings.kafka_dead_letter_topic, settings.kafka_verdict_topic, watch, metrics,
                     lifecycle.stop_now)  # fmt: skip


def start_services(settings: Settings, health: Health, metrics: StreamMetrics, lifecycle: Lifecycle) -> Services:
    """Database (schema checked), engine (loaded, warm, followed), decoder, producer; waits while one is down."""
    notify.notify_status("starting: database, engine, producer")
    return build_services(
        settings,
        partial(kafka_sink, settings, metrics, lifecycle),
        health=health,
        metrics=metrics,
        lifecycle=lifecycle,
        wait=True,
        probes=partial(watch_dependencies, settings, health),
    )


def verdict_pages(settings: Settings, services: Services) -> Pages:
    """The ``/verdicts`` pages (``report_http``): what the store holds; media re-read only under ``media_roots``."""
    from deepsift.daemon.report.http import VerdictPages
    from deepsift.daemon.report.media import MediaAccess
    from deepsift.daemon.report.pages import ReportSource

    log.warning("verdict_pages_served", path="/verdicts", note="pages show uploaded media: protect this port")
    return VerdictPages(ReportSource(services.repository, MediaAccess.of(settings.media_roots)))


def run_stream(settings: Settings) -> int:
    """The ``daemon run`` service: exit 0 after a drain, 1 when it cannot start or a stage crashed."""
    lifecycle, health, metrics = Lifecycle(), Health(), StreamMetrics()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lifecycle.request_stop)
    server = HealthServer(
        health, metrics.render, settings.health_host, settings.health_port, pages=settings.report_http
    ).start()
    log.info("health_listening", host=settings.health_host, port=server.port)
    try:
        services = start_services(settings, health, metrics, lifecycle)
        if settings.report_http:
            server.serve_pages(verdict_pages(settings, services))
        source = SOURCES.get("kafka")(SourceRequest(settings, health, metrics, Watch(health, metrics)))
        try:
            return PipelineLoop(services, source).run()
        finally:
            services.config.decoder.close()  # DALI's worker process, when it was started
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
