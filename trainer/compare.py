"""Two versions of one engine judged on the same jobs, from the verdict store: how often they agree, what flipped,
how P(fake) moved, and how each does on the jobs people reviewed. ``trainer engines compare`` prints it;
``trainer engines promote --require-*`` checks a version against it before making it current.

A verdict's *decision* is its ``verdicts.is_fake`` (``fake`` also for a multi-class engine's manipulation class,
``real``), which only an ``ok`` verdict outside the uncertain band has: ``uncertain`` labels and
``abstained``/``error`` verdicts decide nothing (NULL). Agreement is the share of jobs decided by both versions whose
decisions are equal, the same rule as the ``review_queue`` view's ``disagreement``; status flips (``ok`` ↔
``abstained``/``error``) and uncertain verdicts are counted beside it, never inside it. On reviewed jobs (the
job's newest review; truth fake = review label ``fake``) each version's false positives and negatives are
counted at its own stored threshold (``p_fake >= verdicts.threshold`` is fake), uncertain verdicts included.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from deepsift.trainer.verdictdb import read_verdict_store

NEWEST_REVIEW = "NOT EXISTS (SELECT 1 FROM reviews AS newer WHERE newer.job_id = r.job_id AND newer.id > r.id)"
PAIRS_SQL = f"""
SELECT a.job_id, a.status AS a_status, a.label AS a_label, a.p_fake AS a_p_fake, a.threshold AS a_threshold,
       a.is_fake AS a_is_fake, b.status AS b_status, b.label AS b_label, b.p_fake AS b_p_fake,
       b.threshold AS b_threshold, b.is_fake AS b_is_fake, r.label AS reviewed_label
FROM verdicts AS a
JOIN verdicts AS b ON b.job_id = a.job_id AND b.engine_name = a.engine_name AND b.engine_version = :b
LEFT JOIN reviews AS r ON r.job_id = a.job_id AND {NEWEST_REVIEW}
WHERE a.engine_name = :name AND a.engine_version = :a
ORDER BY a.job_id
"""
REVIEWED_SQL = f"""
SELECT v.p_fake, v.threshold, r.label AS reviewed_label
FROM verdicts AS v JOIN reviews AS r ON r.job_id = v.job_id AND {NEWEST_REVIEW}
WHERE v.engine_name = :name AND v.engine_version = :version AND v.status = 'ok' AND v.p_fake IS NOT NULL
"""
SHADOW_COUNT_SQL = (
    "SELECT COUNT(*) FROM verdicts WHERE engine_name = :name AND engine_version = :version AND role = 'shadow'"
)
PSI_BINS = np.linspace(0.0, 1.0, 11)  # P(fake) deciles of the unit interval; empty bins floored at PSI_FLOOR
PSI_FLOOR = 1e-4
OUTCOME_ORDER = ("real", "fake", "uncertain", "abstained", "error")


@dataclass(frozen=True)
class Judgement:
    """One version's verdict of a job, as far as comparing needs it."""

    status: str
    label: str | None
    p_fake: float | None
    threshold: float | None
    is_fake: bool | None = None  # verdicts.is_fake; None where it decides nothing, or was not read (label decides)

    @property
    def decision(self) -> str | None:
        """``real`` or ``fake`` for an ok verdict outside the uncertain band, else None."""
        if self.status != "ok":
            return None
        if self.is_fake is not None:
            return "fake" if self.is_fake else "real"
        if self.label in (None, "uncertain"):
            return None
        return "real" if self.label == "real" else "fake"

    @property
    def outcome(self) -> str:
        """The label of an ok verdict, the status of any other (a row or column of the flip table)."""
        return (self.label or "ok") if self.status == "ok" else self.status

    def says_fake(self) -> bool:
        """At the verdict's own threshold (the engine's rule: fake when P(fake) >= threshold)."""
        return self.p_fake is not None and self.p_fake >= (0.5 if self.threshold is None else self.threshold)


@dataclass(frozen=True)
class Pair:
    job_id: str
    a: Judgement
    b: Judgement
    reviewed_label: str | None  # the job's newest review: real | fake


def read_pairs(url: str, name: str, a: int, b: int) -> list[Pair]:
    """Verdicts of ``name`` versions ``a`` and ``b`` (any role) on the same job, with the job's newest review."""
    from sqlalchemy import text

    with read_verdict_store(url) as connection:
        rows = connection.execute(text(PAIRS_SQL), {"name": name, "a": a, "b": b}).mappings().all()
    side = ("status", "label", "p_fake", "threshold")

    def judgement(row: Any, prefix: str) -> Judgement:
        is_fake = row[f"{prefix}is_fake"]  # SQLite gives 1/0
        return Judgement(*(row[f"{prefix}{k}"] for k in side), None if is_fake is None else bool(is_fake))

    return [
        Pair(r["job_id"], judgement(r, "a_"), judgement(r, "b_"), r["reviewed_label"])
        for r in rows
    ]  # fmt: skip


def read_reviewed(url: str, name: str, version: int) -> list[tuple[Judgement, str]]:
    """Every scored (ok) verdict of one version on a reviewed job, with the job's reviewed label."""
    from sqlalchemy import text

    with read_verdict_store(url) as connection:
        rows = connection.execute(text(REVIEWED_SQL), {"name": name, "version": version}).all()
    return [(Judgement("ok", None, p, t), label) for p, t, label in rows]


def count_shadow_verdicts(url: str, name: str, version: int) -> int:
    from sqlalchemy import text

    with read_verdict_store(url) as connection:
        return int(connection.execute(text(SHADOW_COUNT_SQL), {"name": name, "version": version}).scalar_one())


def agreement(pairs: Sequence[Pair]) -> dict[str, Any]:
    """Jobs decided by both, how many agree, and their share (None when no job was decided by both)."""
    decided = [p for p in pairs if p.a.decision is not None and p.b.decision is not None]
    agreeing = sum(p.a.decision == p.b.decision for p in decided)
    return {"decided_by_both": len(decided), "agreeing": agreeing,
            "agreement": agreeing / len(decided) if decided else None}  # fmt: skip


def _rank(outcome: str) -> tuple[float, str]:
    """real, fake, the manipulation classes by name, uncertain, abstained, error."""
    return (OUTCOME_ORDER.index(outcome) if outcome in OUTCOME_ORDER else 1.5, outcome)


def _ordered(outcomes: set[str]) -> list[str]:
    return sorted(outcomes, key=_rank)


def flip_table(pairs: Sequence[Pair]) -> dict[str, dict[str, int]]:
    """Counts of (A outcome → B outcome), every pair once, rows and columns in a fixed order, zeros left out."""
    counts = Counter((p.a.outcome, p.b.outcome) for p in pairs)
    table: dict[str, dict[str, int]] = {}
    for a, b in sorted(counts, key=lambda key: (_rank(key[0]), _rank(key[1]))):
        table.setdefault(a, {})[b] = counts[a, b]
    return table


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of ``actual`` against ``expected`` over fixed P(fake) bins."""
    e = np.maximum(np.histogram(expected, PSI_BINS)[0] / len(expected), PSI_FLOOR)
    a = np.maximum(np.histogram(actual, PSI_BINS)[0] / len(actual), PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def p_fake_shift(pairs: Sequence[Pair]) -> dict[str, Any]:
    """How P(fake) moved on the jobs both versions scored: means, medians, paired mean shift, KS, PSI."""
    from scipy.stats import ks_2samp

    scored = [(p.a.p_fake, p.b.p_fake) for p in pairs if p.a.p_fake is not None and p.b.p_fake is not None]
    if not scored:
        return {"n": 0}
    a, b = np.array(scored, dtype=float).T
    ks = ks_2samp(a, b)
    return {
        "n": len(scored), "mean_a": float(a.mean()), "mean_b": float(b.mean()),
        "median_a": float(np.median(a)), "median_b": float(np.median(b)), "mean_shift": float((b - a).mean()),
        "ks_statistic": float(ks.statistic), "ks_pvalue": float(ks.pvalue), "psi": psi(a, b),
    }  # fmt: skip


def reviewed_figures(judged: Sequence[tuple[Judgement, str]]) -> dict[str, Any]:
    """ROC-AUC (None unless both truths occur) and errors at the verdicts' own thresholds, on reviewed jobs."""
    from sklearn.metrics import roc_auc_score

    scored = [(j, label == "fake") for j, label in judged if j.p_fake is not None]
    truth = np.array([fake for _, fake in scored], dtype=bool)
    both = truth.any() and not truth.all()
    auc = float(roc_auc_score(truth, [j.p_fake for j, _ in scored])) if both else None
    return {
        "n": len(scored), "fake": int(truth.sum()), "real": int((~truth).sum()), "roc_auc": auc,
        "false_positives": sum(j.says_fake() and not fake for j, fake in scored),
        "false_negatives": sum(fake and not j.says_fake() for j, fake in scored),
    }  # fmt: skip


def compare(pairs: Sequence[Pair]) -> dict[str, Any]:
    """Every figure of ``trainer engines compare`` (JSON-ready: None where a figure is undefined)."""
    statuses = Counter(f"{p.a.status}->{p.b.status}" for p in pairs if p.a.status != p.b.status)
    both_ok = [p for p in pairs if p.a.status == p.b.status == "ok"]
    reviewed = [p for p in both_ok if p.reviewed_label is not None]  # the same jobs for both versions
    return {
        "jobs_paired": len(pairs),
        "both_ok": len(both_ok),
        "status_flips": dict(sorted(statuses.items())),
        "uncertain": {"a": sum(p.a.outcome == "uncertain" for p in pairs),
                      "b": sum(p.b.outcome == "uncertain" for p in pairs)},
        **agreement(pairs),
        "flips": flip_table(pairs),
        "p_fake": p_fake_shift(pairs),
        "reviewed": {"a": reviewed_figures([(p.a, p.reviewed_label) for p in reviewed]),
                     "b": reviewed_figures([(p.b, p.reviewed_label) for p in reviewed])},
    }  # fmt: skip


def _figure(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _table(flips: dict[str, dict[str, int]]) -> list[str]:
    columns = _ordered({b for row in flips.values() for b in row})
    cells = [["A \\ B", *columns], *([a, *(str(row.get(b, 0)) for b in columns)] for a, row in flips.items())]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    return ["  " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            for r in cells]  # fmt: skip


def format_comparison(figures: dict[str, Any], name: str, a: int, b: int) -> list[str]:
    """The comparison as lines for a terminal."""
    flips = ", ".join(f"{k.replace('->', '→')} {n}" for k, n in figures["status_flips"].items()) or "none"
    lines = [
        f"engine {name}: A = v{a:04d}, B = v{b:04d}; {figures['jobs_paired']} jobs judged by both",
        f"statuses: {figures['both_ok']} ok for both; flips: {flips}",
        f"decisions (real vs fake; uncertain and non-ok verdicts decide nothing): {figures['agreeing']} of "
        f"{figures['decided_by_both']} jobs decided by both agree: agreement {_figure(figures['agreement'])}",
        f"uncertain: A {figures['uncertain']['a']}, B {figures['uncertain']['b']}",
        "outcomes (A → B):",
        *_table(figures["flips"]),
    ]
    shift = figures["p_fake"]
    if shift["n"]:
        lines.append(
            f"P(fake) on {shift['n']} jobs scored by both: mean {shift['mean_a']:.3f} → {shift['mean_b']:.3f} "
            f"(shift {shift['mean_shift']:+.3f}), median {shift['median_a']:.3f} → {shift['median_b']:.3f}, "
            f"KS {shift['ks_statistic']:.3f} (p {shift['ks_pvalue']:.3g}), PSI {shift['psi']:.3f}"
        )
    reviewed = figures["reviewed"]
    lines.append(f"reviewed jobs scored by both: {reviewed['a']['n']} ({reviewed['a']['fake']} fake)")
    for side, version in (("a", a), ("b", b)):
        r = reviewed[side]
        lines.append(
            f"  {side.upper()} v{version:04d}: ROC-AUC {_figure(r['roc_auc'])}; at its own threshold "
            f"false positives {r['false_positives']}, false negatives {r['false_negatives']}"
        )
    return lines


@dataclass(frozen=True)
class Requirements:
    """What a version must show in the verdict store before ``engines promote`` makes it current."""

    shadow_verdicts: int | None = None
    agreement: float | None = None  # with the current version, on jobs decided by both
    reviewed_auc: float | None = None

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.shadow_verdicts, self.agreement, self.reviewed_auc))


def _shadow_requirement(url: str, name: str, version: int, required: int) -> tuple[bool, str]:
    n = count_shadow_verdicts(url, name, version)
    return n >= required, f"{n} shadow verdicts (required {required})"


def _agreement_requirement(url: str, name: str, version: int, current: int | None, required: float) -> tuple[bool, str]:
    if current is None:
        return False, "no current version to agree with"
    found = agreement(read_pairs(url, name, current, version))
    value, n = found["agreement"], found["decided_by_both"]
    phrase = f"agreement with v{current:04d} {_figure(value)} on {n} jobs decided by both (required {required})"
    return value is not None and value >= required, phrase


def _auc_requirement(url: str, name: str, version: int, required: float) -> tuple[bool, str]:
    r = reviewed_figures(read_reviewed(url, name, version))
    phrase = f"reviewed ROC-AUC {_figure(r['roc_auc'])} on {r['n']} jobs, {r['fake']} fake (required {required})"
    return r["roc_auc"] is not None and r["roc_auc"] >= required, phrase


def check_requirements(
    url: str, name: str, version: int, current: int | None, wanted: Requirements
) -> tuple[list[str], list[str]]:
    """(unmet, met): one phrase per requirement asked for, with the figure measured."""
    checks = []
    if wanted.shadow_verdicts is not None:
        checks.append(_shadow_requirement(url, name, version, wanted.shadow_verdicts))
    if wanted.agreement is not None:
        checks.append(_agreement_requirement(url, name, version, current, wanted.agreement))
    if wanted.reviewed_auc is not None:
        checks.append(_auc_requirement(url, name, version, wanted.reviewed_auc))
    return [p for ok, p in checks if not ok], [p for ok, p in checks if ok]
