"""The verdict metrics, read the way Prometheus reads them: from the text ``/metrics`` serves."""

from __future__ import annotations

import platform

import pytest
from prometheus_client.parser import text_string_to_metric_families

from deepsift.daemon.records import EngineIdentity, FrameScoreRecord, VerdictRecord
from deepsift.daemon.stream.metrics import OUTCOMES, StreamMetrics, deepsift_version

ENGINE = EngineIdentity("sd2-vit-tiny", 3, "ab" * 32)
SERVING = {"engine": "sd2-vit-tiny", "version": "3", "role": "serving"}


def verdict(status: str = "ok", **fields: object) -> VerdictRecord:
    return VerdictRecord("j", "kafka", "file:///m/a.mp4", status, ENGINE, **fields)


def faces(n: int) -> tuple[FrameScoreRecord, ...]:
    return tuple(FrameScoreRecord(i // 2, 0.5, face_index=i % 2) for i in range(n))


def samples(metrics: StreamMetrics) -> dict[tuple[str, frozenset], float]:
    """Every sample of the scrape, keyed by its name and labels."""
    text = metrics.render().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(scraped: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float | None:
    return scraped.get((name, frozenset(labels.items())))


def test_a_stored_verdict_counts_by_status_label_and_code_and_observes_its_p_fake():
    # Given two fakes, an uncertain verdict, a no-face abstention and an error of one engine
    metrics = StreamMetrics()
    for record in (
        verdict(label="fake", p_fake=0.93, frames=faces(4)),
        verdict(label="fake", p_fake=0.81, frames=faces(2)),
        verdict(label="uncertain", p_fake=0.42),
        verdict("abstained", code="no_face"),
        verdict("error", code="corrupt_media", detail="moov atom not found"),
    ):
        metrics.observe_verdict(record)
    scraped = samples(metrics)
    # Then each lands in its own series: label only on ok verdicts, code only on the others
    counted = "deepsift_verdicts_stored_total"
    assert value(scraped, counted, **SERVING, status="ok", label="fake", code="") == 2
    assert value(scraped, counted, **SERVING, status="ok", label="uncertain", code="") == 1
    assert value(scraped, counted, **SERVING, status="abstained", label="", code="no_face") == 1
    assert value(scraped, counted, **SERVING, status="error", label="", code="corrupt_media") == 1
    # And P(fake) is observed for the three verdicts that have one, in buckets of 0.05
    assert value(scraped, "deepsift_verdict_p_fake_count", **SERVING) == 3
    assert value(scraped, "deepsift_verdict_p_fake_sum", **SERVING) == pytest.approx(0.93 + 0.81 + 0.42)
    assert value(scraped, "deepsift_verdict_p_fake_bucket", **SERVING, le="0.45") == 1
    assert value(scraped, "deepsift_verdict_p_fake_bucket", **SERVING, le="0.85") == 2
    assert value(scraped, "deepsift_verdict_p_fake_bucket", **SERVING, le="0.95") == 3


def test_faces_are_counted_for_judged_and_abstained_verdicts_not_for_errors():
    # Given a 4-face verdict, a whole-frame verdict (scores without face_index), a no-face abstention, an error
    metrics = StreamMetrics()
    metrics.observe_verdict(verdict(label="fake", p_fake=0.9, frames=faces(4)))
    metrics.observe_verdict(verdict(label="real", p_fake=0.1, frames=(FrameScoreRecord(0, 0.1),)))
    metrics.observe_verdict(verdict("abstained", code="no_face"))
    metrics.observe_verdict(verdict("error", code="not_media"))
    scraped = samples(metrics)
    # Then three observations: two with no face, one with four
    assert value(scraped, "deepsift_verdict_faces_count", **SERVING) == 3
    assert value(scraped, "deepsift_verdict_faces_sum", **SERVING) == 4
    assert value(scraped, "deepsift_verdict_faces_bucket", **SERVING, le="0.0") == 2
    assert value(scraped, "deepsift_verdict_faces_bucket", **SERVING, le="2.0") == 2
    assert value(scraped, "deepsift_verdict_faces_bucket", **SERVING, le="4.0") == 3


def test_the_role_comes_from_the_record_unless_given_and_an_unknown_role_is_refused():
    metrics = StreamMetrics()
    metrics.observe_verdict(verdict(label="real", p_fake=0.2, role="shadow"))
    metrics.observe_verdict(verdict(label="real", p_fake=0.3), role="shadow")
    scraped = samples(metrics)
    shadow = {**SERVING, "role": "shadow"}
    assert value(scraped, "deepsift_verdict_p_fake_count", **shadow) == 2
    assert value(scraped, "deepsift_verdict_p_fake_count", **SERVING) is None
    with pytest.raises(ValueError, match="role"):
        metrics.observe_verdict(verdict(label="real", p_fake=0.3), role="canary")  # unbounded label values


def test_jobs_count_by_outcome_from_zero_and_errors_by_code():
    # Given a fresh daemon's metrics and three finished jobs
    metrics = StreamMetrics()
    assert {value(samples(metrics), "deepsift_jobs_total", outcome=o) for o in OUTCOMES} == {0.0}
    metrics.finished("ok", None)
    metrics.finished("ok", None)
    metrics.finished("error", "poison_job")
    scraped = samples(metrics)
    # Then each outcome has its series (rates work before the first error), and the error's code is counted
    assert value(scraped, "deepsift_jobs_total", outcome="ok") == 2
    assert value(scraped, "deepsift_jobs_total", outcome="error") == 1
    assert value(scraped, "deepsift_jobs_total", outcome="abstained") == 0
    assert value(scraped, "deepsift_job_errors_total", code="poison_job") == 1


def test_the_scrape_has_process_platform_and_build_figures_and_no_created_series():
    metrics = StreamMetrics()
    metrics.finished("ok", None)
    metrics.observe_verdict(verdict(label="fake", p_fake=0.9, frames=faces(1)))
    scraped = samples(metrics)
    names = {name for name, _ in scraped}
    # Then the process's own figures are served (Linux: from /proc) beside the Python platform
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_start_time_seconds"} <= names
    assert value(scraped, "process_resident_memory_bytes") > 0
    assert any(name == "python_info" for name in names)
    # And one build-info series of value 1 naming this package's version and this Python
    build = [(dict(labels), v) for (name, labels), v in scraped.items() if name == "deepsift_build_info"]
    assert build == [({"version": deepsift_version(), "python": platform.python_version()}, 1.0)]
    # And no counter or histogram carries a *_created twin
    assert not [name for name in names if name.endswith("_created")]
