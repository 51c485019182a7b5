"""The ``daemon`` command: ``run`` the Kafka service, ``submit`` jobs to it, ``scan`` local media into
verdicts, ``report`` a verdict as an HTML page, ``review`` verdicts, measure ``drift``, ``db upgrade`` the
schema."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import structlog
from pydantic import ValidationError

from deepsift.daemon.logs import configure_logging
from deepsift.daemon.review_commands import add_review_parser
from deepsift.daemon.settings import Settings
from deepsift.engines.cliargs import finish_parser
from deepsift.engines.errors import ConfigurationError, DeepsiftError

if TYPE_CHECKING:
    from deepsift.daemon.repository import VerdictRepository
    from deepsift.daemon.scan import ScanResult

SCAN_EXIT_CODES = """\
paths that cannot be read as files get error verdicts with one of these codes, and the scan goes on:
  not_found         a missing path or a dangling symbolic link
  symlink_loop      a symbolic link that leads back to itself
  unreadable        a file that cannot be opened or read, a folder that cannot be listed
  not_regular_file  a FIFO, socket or device (never opened)
a verdict the database refuses is replaced by a store_failed error verdict.

exit status:
  0  every file got a verdict from its media (ok, abstained, or an error such as corrupt_media)
  2  every file got a verdict, but some paths could not be read as files or some verdicts could not
     be stored; the footer counts each
  1  the scan could not run (no engine, database unreachable or not migrated) or broke off
  78 a configuration error no wait can fix: a bad setting, an unreadable secret file, an unknown
     database or role, a wrong password
"""
# sysexits.h EX_CONFIG: every command's exit status for a configuration error, told apart from the outcomes (2, 3)
# and from 1 (could not run now); systemd's RestartPreventExitStatus= and Kubernetes' podFailurePolicy key on it.
EX_CONFIG = 78


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        "database_url": args.database_url,
        "engine_store": args.engine_store,
        "engine_name": args.engine,
        "engine_version": getattr(args, "engine_version", None),
        "frames_per_video": getattr(args, "frames", None),
        "aggregation": getattr(args, "aggregation", None),
        "health_port": getattr(args, "health_port", None),
        "kafka_bootstrap_servers": getattr(args, "bootstrap_servers", None),
        "kafka_topic": getattr(args, "topic", None),
        "shadow_engines": getattr(args, "shadow", None),
    }
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def cmd_db_upgrade(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    from deepsift.daemon.db import current_revision, upgrade_database

    upgrade_database(settings.database_url, args.revision)
    print(f"database at revision {current_revision(settings.database_url)}", file=out)
    return 0


def cmd_db_current(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    from deepsift.daemon.db import current_revision

    revision = current_revision(settings.database_url)
    print(f"database at revision {revision or 'none (never migrated: run daemon db upgrade)'}", file=out)
    return 0


def cmd_scan(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    import signal

    from deepsift.daemon.compose import build_services
    from deepsift.daemon.scan import OUTAGE_PATIENCE_S, ScanFailed, exit_code, scan_results
    from deepsift.daemon.sources.files import FilesSource
    from deepsift.daemon.stream.sink import NoSink
    from deepsift.daemon.table import VerdictTable

    services = build_services(settings, lambda _watch: NoSink())
    services = replace(services, outage_patience_s=OUTAGE_PATIENCE_S)
    for signum in (signal.SIGTERM, signal.SIGINT):  # a first signal drains: what a stage started is stored
        signal.signal(signum, services.lifecycle.request_stop)
    try:
        table = VerdictTable(out)
        for shadow in services.shadows:
            print(f"shadow {shadow.manifest.name} v{shadow.manifest.version} (stored as shadow verdicts)", file=out)
        table.header(services.engines.current().manifest)
        results: list[ScanResult] = []
        try:
            for result in scan_results(services, FilesSource(args.paths)):
                results.append(table.row(result))
        except ScanFailed:
            table.footer(results)  # what was judged before the scan broke off; the error follows (exit 1)
            raise
        table.footer(results)
        report = getattr(args, "report", None)  # callers may build the namespace without it
        if report is not None:
            index = _write_scan_report(report, args.paths, settings, services.repository, results)
            print(f"report: {index}", file=out)
    finally:
        services.engines.stop()
        services.config.decoder.close()  # DALI's worker process, when it was started
    return exit_code(results)


def _write_scan_report(
    directory: Path, paths: Sequence[Path], settings: Settings, repository: VerdictRepository,
    results: Sequence[ScanResult],
) -> Path:  # fmt: skip
    from deepsift.daemon.report.media import MediaAccess
    from deepsift.daemon.report.pages import ReportSource, scan_title, write_scan_report

    source = ReportSource(repository, MediaAccess.of(settings.media_roots))
    verdicts = [(r.verdict_id, r.verdict) for r in results]
    return write_scan_report(directory, verdicts, source, scan_title(paths))


REPORT_NOT_FOUND = 3  # `daemon report`: no verdict has that id, or the job has none


def cmd_report(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    from deepsift.daemon.db import make_database
    from deepsift.daemon.report.media import MediaAccess
    from deepsift.daemon.report.pages import ReportSource, VerdictNotFound, write_page
    from deepsift.daemon.repository import VerdictRepository

    database = make_database(settings.database_url)
    try:
        source = ReportSource(VerdictRepository(database), MediaAccess.of(settings.media_roots))
        try:
            verdict_id = args.verdict_id if args.job_id is None else source.newest_for_job(args.job_id)
            html = source.verdict_page(verdict_id)
        except VerdictNotFound as e:
            print(f"daemon report: {e} in {database.url.render_as_string(hide_password=True)}", file=sys.stderr)
            return REPORT_NOT_FOUND
        path = write_page(args.out or Path(f"verdict-{verdict_id}.html"), html)
    finally:
        database.dispose()
    print(path, file=out)
    return 0


def _quiet_libraries(level: str) -> None:
    """kafka-python and Alembic log every connection and schema check at INFO; keep their warnings, except
    kafka-python's "task ran for 0.2 s" notes, which a busy CPU (decode, inference) triggers all the time."""
    if level != "DEBUG":
        for name in ("kafka", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)


def cmd_run(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    from deepsift.daemon.stream.service import run_stream

    _quiet_libraries(settings.log_level)
    return run_stream(settings)


def cmd_submit(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    from deepsift.daemon.stream.submit import SubmitOptions, jobs_for, submit

    _quiet_libraries(settings.log_level)
    try:
        metadata = json.loads(args.metadata) if args.metadata else None
    except ValueError as e:
        raise DeepsiftError(f"--metadata is not JSON: {e}") from e
    if metadata is not None and not isinstance(metadata, dict):
        raise DeepsiftError("--metadata must be a JSON object")
    options = SubmitOptions(args.media_type, args.job_frames, args.masks, metadata, hash_files=not args.no_hash)
    try:
        jobs = list(jobs_for(args.items, options))
    except ValueError as e:  # pydantic's ValidationError: an option out of range
        raise DeepsiftError(f"not a valid job: {e}") from e
    for job_id in submit(jobs, settings):
        print(job_id, file=out)
    return 0


def _add_report_parser(commands: argparse._SubParsersAction) -> None:
    report = commands.add_parser(
        "report",
        help="write the HTML evidence page of one stored verdict",
        description="Write a self-contained HTML page that shows why a verdict was made: the verdict and engine,\n"
        "the P(fake) timeline, the most suspicious frames with their face boxes and crops, masks, media facts\n"
        "and timings. Frames are re-read from the media while it is still there (scanned paths, or file:// media\n"
        "under media_roots); downloaded media is not fetched again.",
        epilog=f"exit status: 0 written, {REPORT_NOT_FOUND} no such verdict or job, 1 the database cannot be read",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = report.add_mutually_exclusive_group(required=True)
    which.add_argument("verdict_id", nargs="?", type=int, help="the verdict's id (verdicts.id)")
    which.add_argument("--job-id", help="the job's newest verdict instead")
    report.add_argument("--out", type=Path, help="the page to write (default: verdict-<id>.html here)")
    report.set_defaults(handler=cmd_report)


def _global_options(parser: argparse.ArgumentParser, default: Any = None) -> None:
    """Options every subcommand takes, before or after its name (``engines.cliargs``)."""
    parser.add_argument("--database-url", default=default, help="SQLAlchemy URL (env DEEPSIFT_DATABASE_URL)")
    parser.add_argument(
        "--engine-store", type=Path, default=default, help="engine store root (env DEEPSIFT_ENGINE_STORE)"
    )
    parser.add_argument("--engine", default=default, help="engine name (env DEEPSIFT_ENGINE_NAME)")


def _shadow_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shadow", action="append", metavar="NAME[@VERSION]",
        help="also score every job with this engine, stored as shadow verdicts; repeatable "
        "(env DEEPSIFT_SHADOW_ENGINES)",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="daemon", description="deepsift daemon: media in, verdicts in SQL out")
    _global_options(parser)
    commands = parser.add_subparsers(dest="command", required=True)

    scan = commands.add_parser(
        "scan",
        help="judge local videos and images, store one verdict per file",
        description="Judge local videos and images and store one verdict per file: every file named, and every\n"
        "file with a media suffix inside a named folder (recursively; symlinked folders inside are not followed).",
        epilog=SCAN_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    scan.add_argument("paths", nargs="+", type=Path, help="files and folders (folders: media files, recursively)")
    scan.add_argument("--engine-version", type=int, help="use this version instead of 'current'")
    scan.add_argument("--frames", type=int, help="frames sampled per video (env DEEPSIFT_FRAMES_PER_VIDEO)")
    scan.add_argument("--aggregation", help="mean | max | topk[:fraction] | quantile[:q] (env DEEPSIFT_AGGREGATION)")
    scan.add_argument("--report", type=Path, metavar="DIR", help="also write an HTML page per verdict and an index")
    _shadow_option(scan)
    scan.set_defaults(handler=cmd_scan)

    _add_report_parser(commands)
    add_review_parser(commands)
    from deepsift.daemon.drift import configure_drift_parser

    configure_drift_parser(commands.add_parser("drift", help="compare two windows of an engine's verdicts (drift)"))

    run = commands.add_parser("run", help="the service: judge upload jobs from Kafka until SIGTERM")
    run.add_argument("--bootstrap-servers", help="Kafka host:port,… (env DEEPSIFT_KAFKA_BOOTSTRAP_SERVERS)")
    run.add_argument("--topic", help="jobs topic (env DEEPSIFT_KAFKA_TOPIC)")
    run.add_argument("--health-port", type=int, help="port of /healthz/* and /metrics (env DEEPSIFT_HEALTH_PORT)")
    _shadow_option(run)
    run.set_defaults(handler=cmd_run)

    submit = commands.add_parser("submit", help="put jobs for local files or URLs on the jobs topic; prints job ids")
    submit.add_argument("items", nargs="+", metavar="PATH|URL", help="files, folders (their media) or http(s) URLs")
    submit.add_argument("--bootstrap-servers", help="Kafka host:port,… (env DEEPSIFT_KAFKA_BOOTSTRAP_SERVERS)")
    submit.add_argument("--topic", help="jobs topic (env DEEPSIFT_KAFKA_TOPIC)")
    submit.add_argument(
        "--media-type", choices=("auto", "video", "image"), default="auto", help="what the jobs declare the media is"
    )
    submit.add_argument(
        "--frames", type=int, dest="job_frames", help="frames to sample per video (default: the daemon's setting)"
    )
    submit.add_argument("--masks", action="store_true", help="ask for manipulation masks where the engine makes them")
    submit.add_argument("--metadata", help="JSON object echoed into each verdict's metadata")
    submit.add_argument("--no-hash", action="store_true", help="do not send the sha256 of local files")
    submit.set_defaults(handler=cmd_submit)

    db = commands.add_parser("db", help="database schema")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_commands.add_parser("upgrade", help="apply migrations (alembic) up to a revision")
    upgrade.add_argument("revision", nargs="?", default="head", help="target revision (default: head)")
    upgrade.set_defaults(handler=cmd_db_upgrade)
    current = db_commands.add_parser("current", help="print the revision the database is at")
    current.set_defaults(handler=cmd_db_current)
    return finish_parser(parser, _global_options)


def setting_errors(error: ValidationError) -> str:
    """Pydantic's validation errors as one line: each setting, what is wrong with it."""
    parts = [f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in error.errors()]
    return "invalid settings: " + "; ".join(parts)


def _report_unknown_variables() -> None:
    """A misspelt ``DEEPSIFT_*`` variable is ignored by the settings; say so at start-up, with the likely name."""
    from deepsift.daemon.settings import unknown_variables

    for name, closest in unknown_variables():
        structlog.get_logger("daemon").warning("unknown_setting_variable", variable=name, did_you_mean=closest)


def load_settings(args: argparse.Namespace) -> Settings:
    """The settings, or a ``ConfigurationError`` that says in one line what is wrong with them."""
    try:
        return _settings(args)
    except ValidationError as e:  # a bad value from an option, the environment, the settings file, a secret file
        raise ConfigurationError(setting_errors(e)) from e
    except (OSError, ValueError) as e:  # a settings file that is missing or is not TOML
        raise ConfigurationError(f"settings file: {e}") from e


def _one_line(command: str, error: ConfigurationError) -> None:
    """A configuration error as one line on stderr: a JSON log line when logs are JSON (log pipelines parse every
    line), else plain text; never a traceback."""
    from deepsift.engines.logs import json_logs

    if json_logs():
        structlog.get_logger("daemon").error("configuration_error", command=command, error=str(error))
    else:
        print(f"daemon: {error}", file=sys.stderr)


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args)
    except ConfigurationError as e:
        print(f"daemon: {e}", file=sys.stderr)
        return EX_CONFIG
    configure_logging(settings.log_level, settings.log_format)
    _report_unknown_variables()
    try:
        return args.handler(settings, args, out)
    except ConfigurationError as e:
        _one_line(args.command, e)
        return EX_CONFIG
    except DeepsiftError as e:
        structlog.get_logger("daemon").error("command_failed", command=args.command, error=str(e))
        print(f"daemon: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
