"""The example alert rules in deploy/prometheus: well formed, and every series they name is one the daemon's
``/metrics`` really serves (or Prometheus's own ``up``), selected by labels it has — so a renamed metric or label
cannot leave a rule silently watching nothing. (``promtool check rules`` checks the PromQL syntax where installed.)
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from deepsift.daemon.records import EngineIdentity, FrameScoreRecord, VerdictRecord
from deepsift.daemon.stream.metrics import StreamMetrics

RULES = Path(__file__).resolve().parents[3] / "deploy" / "prometheus" / "deepsift-alerts.yaml"
TARGET_LABELS = {"job", "instance"}  # Prometheus adds them to every scraped series
PROMETHEUS_OWN = {"up", "ALERTS"}
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*\"")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")


def scraped_series() -> dict[str, set[str]]:
    """Each series name the daemon serves once it has stored verdicts and owns a partition, with its labels."""
    metrics = StreamMetrics()
    engine = EngineIdentity("e", 1, "ab" * 32)
    faces = (FrameScoreRecord(0, 0.9, face_index=0),)
    for status, fields in (("ok", {"label": "fake", "p_fake": 0.9, "frames": faces}),
                           ("abstained", {"code": "no_face"}), ("error", {"code": "corrupt_media"})):  # fmt: skip
        metrics.observe_verdict(VerdictRecord("j", "kafka", "file:///m.mp4", status, engine, **fields))
    metrics.engine.labels(name="e", version="1").set(1)
    metrics.assigned.set(4)
    metrics.lag.labels(topic="jobs", partition="0").set(3)
    series: dict[str, set[str]] = defaultdict(set)
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            series[sample.name] |= set(sample.labels)
    return series


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def served() -> dict[str, set[str]]:
    return scraped_series()


def test_every_rule_is_an_alert_with_a_severity_a_summary_and_a_duration():
    found = rules()
    assert found and len({rule["alert"] for rule in found}) == len(found)
    for rule in found:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning", "info") and rule["annotations"]["summary"]
        assert re.fullmatch(r"\d+[smhd]", rule["for"]), rule["alert"]


@pytest.mark.parametrize("rule", rules(), ids=lambda rule: rule["alert"])
def test_every_series_a_rule_selects_is_served_with_the_labels_it_matches(rule, served):
    expr = rule["expr"]
    selected = SELECTOR.findall(expr)
    assert selected, f"{rule['alert']} selects no series"
    labels_of_selected: set[str] = set()
    for name, matchers in selected:
        if name in PROMETHEUS_OWN:
            continue
        assert name in served, f"{rule['alert']}: {name} is not served by the daemon"
        labels = served[name] | TARGET_LABELS
        unknown = {label for label, _ in MATCHER.findall(matchers)} - labels
        assert not unknown, f"{rule['alert']}: {name} has no label {sorted(unknown)}"
        labels_of_selected |= labels
    for grouping in GROUPING.findall(expr):
        grouped = {label.strip() for label in grouping.split(",") if label.strip()}
        assert grouped <= labels_of_selected, f"{rule['alert']}: groups by labels no selected series has"


def test_every_deepsift_metric_the_file_mentions_is_served(served):
    # Descriptions name metrics too (where to look next): they must not go stale either
    mentioned = set(re.findall(r"\bdeepsift_[a-z0-9_]+", RULES.read_text()))
    assert mentioned and mentioned - set(served) <= {"deepsift_verdict_faces", "deepsift_verdict_p_fake"}
    families = {name.removesuffix("_bucket") for name in served if name.endswith("_bucket")}
    assert mentioned & {"deepsift_verdict_faces", "deepsift_verdict_p_fake"} <= families
