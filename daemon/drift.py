"""``daemon drift``: has what an engine decides moved? Two windows of its stored serving verdicts, compared.

The figures, each against its own threshold:

- **PSI** (population stability index) of the P(fake) of ``ok`` verdicts: bins cut at the baseline's quantiles
  (deciles by default; tied quantiles merge their bins), ``Σ (c − b) · ln(c / b)`` over the bins' shares ``b``
  (baseline) and ``c`` (current). A share of 0 would make the term infinite, so shares are floored at
  ``PSI_EPSILON`` (1e-4): a bin that empties adds a large, finite term. 0.2 is the usual "significant shift".
  Two samples of one distribution give about ``(bins − 1) · (1/n₁ + 1/n₂)`` by chance alone (0.036 for 10 bins
  and 500 verdicts each): the reason for ``--min-verdicts``.
- **KS**, the two-sample Kolmogorov–Smirnov test on the same values. It counts as drift only when it is both
  significant (p < ``--alpha``) and large (statistic D > ``--max-ks``): with a week of traffic any difference,
  however small, is significant.
- **no-face rate** (``abstained``/``no_face`` among all verdicts) and **error rate** (``error`` among all): the
  change from baseline to current, in either direction, against ``--max-rate-change``.

Too few verdicts in a window is never an alarm: exit 3, and the line says which window. With enough verdicts but
too few ``ok`` ones, the rates are still compared (an engine that only errs is drift) and PSI and KS are not.
The values are read with SQLAlchemy Core in chunks; counts are grouped by the database. Exact re-uploads answered
from an earlier verdict count like any stored verdict: they are traffic too.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from deepsift.engines.errors import DeepsiftError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from deepsift.daemon.settings import Settings

NO_DRIFT, DRIFT, TOO_FEW = 0, 2, 3  # exit status; 1: the comparison could not run (database, options)
PSI_EPSILON = 1e-4
DEFAULT_CURRENT_HOURS, DEFAULT_BASELINE_HOURS = 24.0, 168.0
CHUNK_ROWS = 50_000  # P(fake) values fetched per round trip
EXIT_STATUS = f"""\
exit status:
  {NO_DRIFT}  no figure crossed its threshold
  {DRIFT}  drift: the last line names each figure that crossed its threshold
  {TOO_FEW}  too few verdicts in a window to compare (never reported as drift)
  1  the comparison could not run (database unreachable or not migrated, contradictory options)
"""


@dataclass(frozen=True)
class Window:
    """Verdicts stored at or after ``start`` and before ``end``."""

    start: datetime
    end: datetime


@dataclass(frozen=True)
class WindowSample:
    """What one window's serving verdicts hold: counts by outcome and the P(fake) of its ``ok`` verdicts."""

    window: Window
    total: int
    no_face: int
    errors: int
    p_fake: np.ndarray

    @property
    def no_face_rate(self) -> float:
        return self.no_face / self.total if self.total else 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.total if self.total else 0.0


@dataclass(frozen=True)
class Thresholds:
    max_psi: float = 0.2
    alpha: float = 0.01
    max_ks: float = 0.1
    max_rate_change: float = 0.05
    min_verdicts: int = 500
    bins: int = 10


@dataclass(frozen=True)
class Figure:
    """One compared figure; ``value`` None when a window had too few verdicts to compute it."""

    name: str  # psi | ks | no_face_rate | error_rate
    value: float | None
    threshold: float
    crossed: bool
    baseline: float | None = None  # the rates of each window
    current: float | None = None
    p_value: float | None = None  # ks

    def reason(self, thresholds: Thresholds) -> str:
        if self.name == "psi":
            return f"psi {self.value:.3f} > --max-psi {self.threshold:g}"
        if self.name == "ks":
            alpha = thresholds.alpha
            return f"ks D {self.value:.3f} > --max-ks {self.threshold:g} with p {self.p_value:.2g} < --alpha {alpha:g}"
        rates = f"{self.baseline:.2%} → {self.current:.2%} ({self.value:+.2%})"
        return f"{self.name} {rates} beyond --max-rate-change {self.threshold:g}"


@dataclass(frozen=True)
class DriftReport:
    engine: str
    engine_version: int | None
    baseline: WindowSample
    current: WindowSample
    thresholds: Thresholds
    figures: tuple[Figure, ...]

    @property
    def too_few(self) -> list[str]:
        """Why a comparison was incomplete: the windows with too few verdicts, or too few ok ones."""
        minimum = self.thresholds.min_verdicts
        found = [f"{name} window has {s.total} verdicts" for name, s in self.named_windows() if s.total < minimum]
        if found:
            return found
        return [f"{name} window has {len(s.p_fake)} ok verdicts" for name, s in self.named_windows()
                if len(s.p_fake) < minimum]  # fmt: skip

    @property
    def exit_code(self) -> int:
        if any(figure.crossed for figure in self.figures):
            return DRIFT
        return TOO_FEW if self.too_few else NO_DRIFT

    def named_windows(self) -> list[tuple[str, WindowSample]]:
        return [("baseline", self.baseline), ("current", self.current)]

    def as_json(self) -> dict[str, Any]:
        windows = {
            name: {"from": s.window.start.isoformat(), "to": s.window.end.isoformat(), "verdicts": s.total,
                   "ok": len(s.p_fake), "no_face_rate": s.no_face_rate, "error_rate": s.error_rate}
            for name, s in self.named_windows()
        }  # fmt: skip
        status = {NO_DRIFT: "no_drift", DRIFT: "drift", TOO_FEW: "too_few"}[self.exit_code]
        return {
            "engine": self.engine, "engine_version": self.engine_version, "status": status,
            "exit_code": self.exit_code, "windows": windows, "thresholds": asdict(self.thresholds),
            "figures": [asdict(figure) for figure in self.figures], "too_few": self.too_few,
            "drift": [figure.reason(self.thresholds) for figure in self.figures if figure.crossed],
        }  # fmt: skip


# --- the statistics ----------------------------------------------------------------------------------------------


def quantile_edges(baseline: np.ndarray, bins: int) -> np.ndarray:
    """The inner edges of ``bins`` bins holding equal shares of ``baseline``; tied quantiles give one edge."""
    return np.unique(np.quantile(baseline, np.arange(1, bins) / bins))


def bin_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The share of ``values`` in each bin ``[edge_i, edge_i+1)``, the outer bins open-ended."""
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return counts / len(values)


def psi_of_shares(expected: np.ndarray, actual: np.ndarray, epsilon: float = PSI_EPSILON) -> float:
    """``Σ (a − e) · ln(a / e)`` with every share floored at ``epsilon``, so an empty bin stays finite."""
    e, a = np.maximum(expected, epsilon), np.maximum(actual, epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def population_stability_index(baseline: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """PSI of ``current`` against ``baseline`` over bins cut at the baseline's quantiles."""
    edges = quantile_edges(baseline, bins)
    return psi_of_shares(bin_shares(baseline, edges), bin_shares(current, edges))


def ks_test(baseline: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """The two-sample Kolmogorov–Smirnov statistic D and its (two-sided) p-value."""
    from scipy.stats import ks_2samp

    result = ks_2samp(baseline, current)
    return float(result.statistic), float(result.pvalue)


def compare(engine: str, version: int | None, baseline: WindowSample, current: WindowSample,
            thresholds: Thresholds) -> DriftReport:  # fmt: skip
    """Every figure the two windows have enough verdicts for, each against its threshold."""
    figures: list[Figure] = []
    if min(baseline.total, current.total) >= thresholds.min_verdicts:
        for name in ("no_face_rate", "error_rate"):
            before, after = getattr(baseline, name), getattr(current, name)
            change = after - before
            crossed = abs(change) > thresholds.max_rate_change
            figures.append(Figure(name, change, thresholds.max_rate_change, crossed, before, after))
    if figures and min(len(baseline.p_fake), len(current.p_fake)) >= thresholds.min_verdicts:
        psi = population_stability_index(baseline.p_fake, current.p_fake, thresholds.bins)
        figures.insert(0, Figure("psi", psi, thresholds.max_psi, psi > thresholds.max_psi))
        d, p = ks_test(baseline.p_fake, current.p_fake)
        crossed = p < thresholds.alpha and d > thresholds.max_ks
        figures.insert(1, Figure("ks", d, thresholds.max_ks, crossed, p_value=p))
    return DriftReport(engine, version, baseline, current, thresholds, tuple(figures))


# --- reading the verdicts ----------------------------------------------------------------------------------------


def read_window(database: Engine, engine: str, version: int | None, window: Window) -> WindowSample:
    """One window's serving verdicts of ``engine`` (every version unless ``version``): the database counts them
    by status and code, and the P(fake) of ``ok`` ones comes back in chunks of ``CHUNK_ROWS``."""
    from sqlalchemy import func, select

    from deepsift.daemon.db import translate_outages
    from deepsift.daemon.models import Verdict

    c = Verdict.__table__.c
    where = [c.engine_name == engine, c.role == "serving", c.created_at >= _utc(window.start)]
    where += [c.created_at < _utc(window.end)] + ([] if version is None else [c.engine_version == version])
    counts = select(c.status, c.code, func.count()).where(*where).group_by(c.status, c.code)
    values = select(c.p_fake).where(*where, c.status == "ok", c.p_fake.is_not(None))
    with translate_outages(), database.connect() as connection:
        by_outcome = {(status, code): n for status, code, n in connection.execute(counts)}
        result = connection.execution_options(yield_per=CHUNK_ROWS).execute(values)
        chunks = [np.fromiter((row[0] for row in part), np.float64, len(part)) for part in result.partitions()]
    return WindowSample(
        window,
        total=sum(by_outcome.values()),
        no_face=by_outcome.get(("abstained", "no_face"), 0),
        errors=sum(n for (status, _), n in by_outcome.items() if status == "error"),
        p_fake=np.concatenate(chunks) if chunks else np.empty(0),
    )


def _utc(moment: datetime) -> datetime:
    """The repository stores UTC and SQLite keeps no zone (its driver writes the wall clock given): bind UTC."""
    return moment.astimezone(UTC)


# --- the command -------------------------------------------------------------------------------------------------


def windows(args: argparse.Namespace, now: datetime) -> tuple[Window, Window]:
    """The baseline and current windows the options name: relative (``--current``/``--baseline`` hours ending at
    ``--until``, the baseline right before the current) or explicit (all four ``--*-from``/``--*-to``)."""
    explicit = (args.baseline_from, args.baseline_to, args.current_from, args.current_to)
    relative = (args.current, args.baseline, args.until)
    if any(value is not None for value in explicit):
        if not all(value is not None for value in explicit):
            raise DeepsiftError("explicit windows need all four of --baseline-from/-to and --current-from/-to")
        if any(value is not None for value in relative):
            raise DeepsiftError("--current/--baseline/--until and explicit --*-from/--*-to windows exclude each other")
        baseline, current = Window(*explicit[:2]), Window(*explicit[2:])
    else:
        end = args.until or now
        hours = args.current if args.current is not None else DEFAULT_CURRENT_HOURS
        current = Window(end - timedelta(hours=hours), end)
        hours = args.baseline if args.baseline is not None else DEFAULT_BASELINE_HOURS
        baseline = Window(current.start - timedelta(hours=hours), current.start)
    for name, window in (("baseline", baseline), ("current", current)):
        if window.start >= window.end:
            raise DeepsiftError(f"the {name} window is empty: {window.start.isoformat()} to {window.end.isoformat()}")
    return baseline, current


def cmd_drift(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    from deepsift.daemon.db import make_database, require_current_schema

    if settings.log_level != "DEBUG":  # Alembic logs its schema check at INFO: noise in a CronJob's log
        logging.getLogger("alembic").setLevel(logging.WARNING)
    baseline_window, current_window = windows(args, datetime.now(UTC))
    thresholds = Thresholds(args.max_psi, args.alpha, args.max_ks, args.max_rate_change, args.min_verdicts, args.bins)
    engine, version = settings.engine_name, settings.engine_version
    database = make_database(settings.database_url)
    try:
        require_current_schema(database)
        baseline = read_window(database, engine, version, baseline_window)
        current = read_window(database, engine, version, current_window)
    finally:
        database.dispose()
    report = compare(engine, version, baseline, current, thresholds)
    if args.json:
        print(json.dumps(report.as_json()), file=out)
    else:
        print_report(report, out)
    return report.exit_code


def print_report(report: DriftReport, out: TextIO) -> None:
    """A small table of the windows and the figures, then one line: no drift, drift (which figures), too few."""
    which = "every version" if report.engine_version is None else f"v{report.engine_version}"
    print(f"drift of {report.engine} ({which}), serving verdicts", file=out)
    print(f"{'window':<9} {'from':<25} {'to':<25} {'verdicts':>8} {'ok':>8} {'no_face':>8} {'errors':>8}", file=out)
    for name, s in report.named_windows():
        print(f"{name:<9} {s.window.start.isoformat(timespec='seconds'):<25} "
              f"{s.window.end.isoformat(timespec='seconds'):<25} {s.total:>8} {len(s.p_fake):>8} "
              f"{s.no_face_rate:>8.2%} {s.error_rate:>8.2%}", file=out)  # fmt: skip
    if report.figures:
        print(f"{'figure':<13} {'value':>9} {'threshold':>10}  result", file=out)
    for figure in report.figures:
        rate = figure.name.endswith("_rate")  # a change in points, either way
        value, threshold = (f"{figure.value:+.2%}", f"±{figure.threshold:.2%}") if rate else (
            f"{figure.value:.3f}", f"{figure.threshold:g}")  # fmt: skip
        note = f" (p {figure.p_value:.2g}, --alpha {report.thresholds.alpha:g})" if figure.name == "ks" else ""
        result = "DRIFT" if figure.crossed else "ok"
        print(f"{figure.name:<13} {value:>9} {threshold:>10}  {result}{note}", file=out)
    crossed = [figure.reason(report.thresholds) for figure in report.figures if figure.crossed]
    if crossed:
        print("drift: " + "; ".join(crossed), file=out)
    elif report.too_few:
        too_few = "; ".join(report.too_few)
        print(f"too few verdicts to compare: {too_few} (--min-verdicts {report.thresholds.min_verdicts})", file=out)
    else:
        print("no drift", file=out)


def _instant(text: str) -> datetime:
    """An ISO 8601 instant; one without a zone is UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _positive(kind: type, minimum: float = 0.0) -> Any:
    """An argparse type: a finite number of ``kind`` above 0 (or at least ``minimum`` when one is given)."""

    def parse(text: str) -> Any:
        value = kind(text)
        if not (math.isfinite(value) and value > 0 and value >= minimum):
            least = f" ≥ {minimum:g}" if minimum else ""
            raise argparse.ArgumentTypeError(f"must be a positive number{least}: {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its error
    return parse


def configure_drift_parser(parser: argparse.ArgumentParser) -> None:
    """The options of ``daemon drift``; the engine is the shared ``--engine`` (env DEEPSIFT_ENGINE_NAME)."""
    parser.description = (
        "Compare two time windows of an engine's stored serving verdicts: the PSI and a Kolmogorov-Smirnov test\n"
        "of P(fake) of ok verdicts, and the no-face and error rates. The engine is --engine (env\n"
        "DEEPSIFT_ENGINE_NAME); windows are relative to now (or --until), or given explicitly."
    )
    parser.epilog = EXIT_STATUS
    add = parser.add_argument
    add("--engine-version", type=int, metavar="N", help="only this version (env DEEPSIFT_ENGINE_VERSION; default: all)")
    hours = _positive(float)
    add("--current", type=hours, metavar="HOURS", help="current window: the hours up to --until (default 24)")
    add("--baseline", type=hours, metavar="HOURS", help="baseline window: the hours right before it (default 168)")
    add("--until", type=_instant, metavar="ISO8601", help="end of the current window (default: now)")
    for window in ("baseline", "current"):
        for edge, says in (("from", "start"), ("to", "end (exclusive)")):
            add(f"--{window}-{edge}", type=_instant, metavar="ISO8601", help=f"explicit {window} window: its {says}")
    defaults = Thresholds()
    add("--bins", type=_positive(int, 2), default=defaults.bins, help="PSI bins (≥ 2), cut at the baseline's quantiles")
    add("--max-psi", type=_positive(float), default=defaults.max_psi, help="PSI above this is drift")
    add("--alpha", type=_positive(float), default=defaults.alpha, help="KS p-value below this is significant")
    add("--max-ks", type=_positive(float), default=defaults.max_ks, help="a significant KS statistic D above it: drift")
    add("--max-rate-change", type=_positive(float), default=defaults.max_rate_change,
        help="a no-face or error rate moving by more than this (0.05: 5 points) is drift")  # fmt: skip
    add("--min-verdicts", type=_positive(int), default=defaults.min_verdicts, help="fewer in a window: exit 3")
    add("--json", action="store_true", help="one JSON object instead of the table")
    parser.set_defaults(handler=cmd_drift)
