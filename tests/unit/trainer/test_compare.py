"""The figures of ``trainer engines compare`` on hand-made pairs: decisions, agreement, flips, PSI, reviewed errors."""

from __future__ import annotations

import numpy as np
import pytest

from deepsift.trainer.compare import Judgement, Pair, Requirements, agreement, compare, psi, reviewed_figures


def ok(label: str, p_fake: float, threshold: float = 0.5) -> Judgement:
    return Judgement("ok", label, p_fake, threshold)


@pytest.mark.parametrize(
    ("judgement", "decision", "outcome"),
    [
        (ok("real", 0.1), "real", "real"),
        (ok("fake", 0.9), "fake", "fake"),
        (ok("tampered", 0.9), "fake", "tampered"),  # a multi-class engine's fake
        (ok("uncertain", 0.5), None, "uncertain"),
        (Judgement("abstained", None, None, None), None, "abstained"),
        (Judgement("error", None, None, None), None, "error"),
    ],
)
def test_only_ok_verdicts_outside_the_band_decide(judgement: Judgement, decision: str | None, outcome: str) -> None:
    assert (judgement.decision, judgement.outcome) == (decision, outcome)


def test_agreement_counts_only_jobs_both_versions_decided() -> None:
    # Given one agreeing pair, one disagreeing pair, and pairs where one side decided nothing
    pairs = [
        Pair("a", ok("real", 0.1), ok("real", 0.2), None),
        Pair("b", ok("real", 0.1), ok("synthetic", 0.8), None),
        Pair("c", ok("uncertain", 0.5), ok("fake", 0.9), None),
        Pair("d", ok("fake", 0.9), Judgement("error", None, None, None), None),
    ]
    # Then agreement is 1 of 2, and the others show up as an uncertain count and a status flip instead
    assert agreement(pairs) == {"decided_by_both": 2, "agreeing": 1, "agreement": 0.5}
    figures = compare(pairs)
    assert figures["status_flips"] == {"ok->error": 1} and figures["uncertain"] == {"a": 1, "b": 0}
    # And with nothing decided by both, agreement is undefined rather than 0 or 1
    assert agreement(pairs[2:])["agreement"] is None


def test_psi_is_zero_for_the_same_distribution_and_grows_with_the_shift() -> None:
    rng = np.random.default_rng(0)
    base = rng.beta(2, 5, 2000)
    assert psi(base, base) == 0.0
    small, large = psi(base, np.clip(base + 0.05, 0, 1)), psi(base, np.clip(base + 0.3, 0, 1))
    assert 0 < small < large


def test_reviewed_errors_are_counted_at_each_verdicts_own_threshold() -> None:
    # Given a real scored 0.6 by an engine at threshold 0.7 (not flagged) and 0.5 (flagged)
    strict = [(ok("real", 0.6, 0.7), "real"), (ok("fake", 0.8, 0.7), "fake")]
    loose = [(ok("fake", 0.6, 0.5), "real"), (ok("real", 0.4, 0.5), "fake")]
    assert reviewed_figures(strict) | {"roc_auc": None} == {
        "n": 2, "fake": 1, "real": 1, "roc_auc": None, "false_positives": 0, "false_negatives": 0,
    }  # fmt: skip
    assert (reviewed_figures(loose)["false_positives"], reviewed_figures(loose)["false_negatives"]) == (1, 1)
    # And with only one truth among the reviewed jobs, the AUC is undefined
    assert reviewed_figures(strict[:1])["roc_auc"] is None and reviewed_figures(strict)["roc_auc"] == 1.0


def test_requirements_are_asked_for_only_when_a_figure_is_given() -> None:
    assert not Requirements() and Requirements(agreement=0.0) and Requirements(shadow_verdicts=0)
