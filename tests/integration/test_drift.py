"""``daemon drift`` against real SQLite and PostgreSQL databases: verdicts stored through the repository with
explicit times, then compared through the command line."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import make_url

from deepsift.daemon.cli import main
from deepsift.daemon.db import make_database
from deepsift.daemon.drift import DRIFT, NO_DRIFT, TOO_FEW
from deepsift.daemon.records import EngineIdentity, VerdictRecord
from deepsift.daemon.repository import VerdictRepository

pytestmark = pytest.mark.integration

START = datetime(2031, 3, 1, tzinfo=UTC)  # the baseline week; then a day like it, a shifted day, a quiet day
WEEK_END, SAME_END, SHIFTED_END, QUIET_END = (START + timedelta(days=d) for d in (7, 8, 9, 10))
OK_PER_WINDOW = 300
MIN_VERDICTS = "200"


@dataclass(frozen=True)
class Stored:
    database_url: str
    engine: str


def _verdicts(engine: EngineIdentity, start: datetime, end: datetime, p_fake: np.ndarray, no_face: int = 0,
              errors: int = 0, role: str = "serving") -> Iterator[VerdictRecord]:  # fmt: skip
    """``ok`` verdicts with these P(fake), plus no-face abstentions and errors, spread evenly over [start, end)."""
    outcomes = [("ok", float(p), None) for p in p_fake] + [("abstained", None, "no_face")] * no_face
    outcomes += [("error", None, "corrupt_media")] * errors
    step = (end - start) / len(outcomes)
    for i, (status, p, code) in enumerate(outcomes):
        label = None if p is None else ("fake" if p >= 0.5 else "real")
        yield VerdictRecord(
            job_id=f"drift-{uuid.uuid4().hex}", source="kafka", media_uri=f"file:///m/{i}.mp4", status=status,
            engine=engine, label=label, p_fake=p, code=code, created_at=start + i * step, role=role,
        )  # fmt: skip


@pytest.fixture(scope="module")
def stored(database_url: str) -> Iterator[Stored]:
    """One engine's serving verdicts: a baseline week, a day like it, a day shifted towards fake and a quiet day
    of five verdicts; beside them, a shadow engine and another engine whose verdicts are shifted and must not
    count."""
    rng = np.random.default_rng(13)
    name = f"drift-{uuid.uuid4().hex[:8]}"
    serving, other = EngineIdentity(name, 2, "ab" * 32), EngineIdentity(f"{name}-other", 1, "cd" * 32)
    verdicts = [
        *_verdicts(serving, START, WEEK_END, rng.beta(2, 5, OK_PER_WINDOW), no_face=12, errors=3),
        *_verdicts(serving, WEEK_END, SAME_END, rng.beta(2, 5, OK_PER_WINDOW), no_face=12, errors=3),
        *_verdicts(serving, SAME_END, SHIFTED_END, rng.beta(5, 2, OK_PER_WINDOW), no_face=12, errors=3),
        *_verdicts(serving, SHIFTED_END, QUIET_END, rng.beta(2, 5, 5)),
        *_verdicts(serving, WEEK_END, SAME_END, rng.beta(9, 1, 100), role="shadow"),
        *_verdicts(other, WEEK_END, SAME_END, rng.beta(9, 1, 100), errors=100),
    ]
    database = make_database(database_url)
    try:
        repository = VerdictRepository(database)
        for record in verdicts:
            repository.save(record)
    finally:
        database.dispose()
    yield Stored(database_url, name)


def drift(stored: Stored, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["drift", "--database-url", stored.database_url, "--engine", stored.engine,
                 "--min-verdicts", MIN_VERDICTS, *argv], out)  # fmt: skip
    return code, out.getvalue()


def explicit(current_from: datetime, current_to: datetime) -> list[str]:
    return ["--baseline-from", START.isoformat(), "--baseline-to", WEEK_END.isoformat(),
            "--current-from", current_from.isoformat(), "--current-to", current_to.isoformat()]  # fmt: skip


def test_a_day_like_the_baseline_week_is_no_drift(stored: Stored) -> None:
    # Given the day after the baseline week, drawn from the same distribution (shadow and other engines shifted)
    # When drift compares the 24 hours up to its end with the 168 before them
    code, out = drift(stored, "--until", SAME_END.isoformat(), "--current", "24", "--baseline", "168")
    # Then nothing crossed, and the table counted only the engine's serving verdicts
    assert code == NO_DRIFT, out
    assert out.rstrip().endswith("no drift")
    assert f"{OK_PER_WINDOW + 15:>8} {OK_PER_WINDOW:>8}" in out  # verdicts, ok: 300 ok + 12 no-face + 3 errors


def test_a_day_shifted_towards_fake_is_drift_and_says_psi(stored: Stored) -> None:
    code, out = drift(stored, *explicit(SAME_END, SHIFTED_END))
    assert code == DRIFT, out
    last = out.rstrip().splitlines()[-1]
    assert last.startswith("drift: psi ") and "> --max-psi 0.2" in last and "ks D" in last
    assert "no_face_rate" not in last and "error_rate" not in last  # the rates did not move


def test_json_names_the_figures_that_crossed(stored: Stored) -> None:
    code, out = drift(stored, "--json", "--engine-version", "2", *explicit(SAME_END, SHIFTED_END))
    report = json.loads(out)
    assert code == DRIFT and report["status"] == "drift" and report["exit_code"] == DRIFT
    crossed = {figure["name"]: figure["value"] for figure in report["figures"] if figure["crossed"]}
    assert set(crossed) == {"psi", "ks"} and crossed["psi"] > 0.2
    assert report["windows"]["current"]["ok"] == OK_PER_WINDOW and report["engine_version"] == 2


def test_too_few_verdicts_is_exit_3_with_the_window_named(stored: Stored) -> None:
    code, out = drift(stored, *explicit(SHIFTED_END, QUIET_END))
    assert code == TOO_FEW, out
    assert out.rstrip().splitlines()[-1] == (
        f"too few verdicts to compare: current window has 5 verdicts (--min-verdicts {MIN_VERDICTS})"
    )


def test_a_version_with_no_verdicts_is_too_few_not_drift(stored: Stored) -> None:
    code, out = drift(stored, "--engine-version", "7", *explicit(SAME_END, SHIFTED_END))
    assert code == TOO_FEW and "baseline window has 0 verdicts" in out


def test_windows_are_instants_whatever_the_sessions_time_zone(stored: Stored) -> None:
    # Given a PostgreSQL session in Tokyo (UTC+9), where a time without a zone would mean Tokyo time
    if make_url(stored.database_url).get_backend_name() != "postgresql":
        pytest.skip("SQLite has no session time zone")
    url = make_url(stored.database_url).update_query_dict({"options": "-c TimeZone=Asia/Tokyo"})
    tokyo = Stored(url.render_as_string(hide_password=False), stored.engine)
    # When drift reads the day after the baseline week
    code, out = drift(tokyo, "--json", *explicit(WEEK_END, SAME_END))
    # Then it reads the same verdicts as in UTC, not a window 9 hours off
    assert code == NO_DRIFT, out
    assert json.loads(out)["windows"]["current"]["verdicts"] == OK_PER_WINDOW + 15
