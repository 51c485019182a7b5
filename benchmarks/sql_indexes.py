"""The analysts' usual queries at 1 M synthetic verdicts on PostgreSQL, without and with migration 0007's indexes.

A throwaway database is created on the server (``--admin-url``), migrated to 0006, filled with ``--rows`` verdicts
by one ``INSERT ... SELECT generate_series`` (inserts only, so the append-only triggers stand; every 10th row is a
shadow verdict of the previous job, so ``latest_verdicts`` has work to do), then VACUUM ANALYZEd. Each query runs
under ``EXPLAIN (ANALYZE, BUFFERS)``; the figure is the best execution time of ``--repeats`` (warm cache), with the
buffers and the indexes of that plan. Then the database is upgraded to 0007 (the time the index build took is
printed), analysed again and the queries run again. The database is dropped at the end.

    .venv/bin/python benchmarks/sql_indexes.py                 # 1 M rows, about 3-5 min on 2 cores
    .venv/bin/python benchmarks/sql_indexes.py --rows 100000   # a quick look
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, make_url, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deepsift.daemon.db import upgrade_database  # noqa: E402

DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DAYS = 90  # the rows' created_at spread evenly over this many days, in id order

# One engine name serves 80 % of the rows, another 20 %, a canary 1 %, each through four versions in time order;
# 5,000 uploaders, 100 campaigns.
FILL = """
INSERT INTO verdicts (job_id, source, media_uri, media_sha256, media_type, status, label, p_fake, threshold,
                      engine_name, engine_version, engine_artifact_sha256, timings_ms, job_metadata, created_at, role)
SELECT 'job-' || (g - CASE WHEN g % 10 = 0 THEN 1 ELSE 0 END), 'kafka', 'file:///media/' || g,
       md5(g::text) || md5((g + 7)::text), 'video',
       CASE WHEN g % 50 = 0 THEN 'error' ELSE 'ok' END,
       CASE WHEN g % 50 = 0 THEN NULL WHEN p > 0.5 THEN 'fake' ELSE 'real' END,
       CASE WHEN g % 50 = 0 THEN NULL ELSE p END, 0.5,
       CASE WHEN g % 100 = 5 THEN 'canary-vit' WHEN g % 10 < 8 THEN 'siglip2-b16' ELSE 'sd2-vit' END,
       1 + (g * 4 / (:rows + 1)) + CASE WHEN g % 10 = 0 THEN 10 ELSE 0 END, repeat('a', 64),
       '{"decode": 12.5, "infer": 3.0}'::jsonb,
       jsonb_build_object('uploader', 'u-' || (g % 5000), 'campaign', 'c-' || (g % 100)),
       :start + (g * (:days * 86400.0 / :rows)) * interval '1 second',
       CASE WHEN g % 10 = 0 THEN 'shadow' ELSE 'serving' END
FROM (SELECT g, random() AS p FROM generate_series(1, :rows) AS g) AS s
"""

QUERIES = {
    "engine version, last day": (
        "SELECT status, label, COUNT(*) FROM verdicts WHERE engine_name = 'siglip2-b16' AND engine_version = 4 "
        "AND created_at >= :cutoff GROUP BY status, label"
    ),
    "one version, a month": (
        "SELECT status, label, COUNT(*) FROM verdicts WHERE engine_name = 'sd2-vit' AND engine_version = 2 "
        "AND created_at >= :month AND created_at < :month_end GROUP BY status, label"
    ),
    "canary version, a month": (
        "SELECT status, label, COUNT(*) FROM verdicts WHERE engine_name = 'canary-vit' AND engine_version = 2 "
        "AND created_at >= :month AND created_at < :month_end GROUP BY status, label"
    ),
    "one version per day, a month": (
        "SELECT date_trunc('day', created_at) AS day, COUNT(*) FROM verdicts WHERE engine_name = 'sd2-vit' "
        "AND engine_version = 2 AND created_at >= :month AND created_at < :month_end GROUP BY 1"
    ),
    "uploader's verdicts": (
        "SELECT id, job_id, label, p_fake, created_at FROM verdicts WHERE job_metadata ->> 'uploader' = 'u-42' "
        "ORDER BY id DESC"
    ),
    "metadata containment": 'SELECT COUNT(*) FROM verdicts WHERE job_metadata @> \'{"campaign": "c-7"}\'',
    "latest per job, last day": "SELECT job_id, label, p_fake FROM latest_verdicts WHERE created_at >= :cutoff",
    "README: fakes today": (
        "SELECT job_id, media_uri, p_fake, engine_name, engine_version, created_at FROM latest_verdicts "
        "WHERE status = 'ok' AND label = 'fake' AND created_at >= :today ORDER BY p_fake DESC"
    ),
    "README: outcomes per version": (
        "SELECT engine_name, engine_version, status, label, COUNT(*) AS n, AVG(p_fake) AS mean_p_fake "
        "FROM verdicts GROUP BY engine_name, engine_version, status, label ORDER BY 1, 2"
    ),
}


def _indexes(plan: dict[str, Any]) -> Iterator[str]:
    if "Index Name" in plan:
        yield plan["Index Name"]
    for child in plan.get("Plans", []):
        yield from _indexes(child)


def explain(engine: Engine, sql: str, params: dict[str, Any], repeats: int) -> dict[str, Any]:
    """The best of ``repeats`` EXPLAIN (ANALYZE, BUFFERS) runs: time, buffers, top node and indexes used."""
    best: dict[str, Any] | None = None
    with engine.connect() as connection:
        for _ in range(repeats):
            rows = connection.execute(text(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}"), params).scalar_one()
            found = (rows if isinstance(rows, list) else json.loads(rows))[0]
            if best is None or found["Execution Time"] < best["Execution Time"]:
                best = found
    assert best is not None
    top = best["Plan"]
    return {
        "ms": best["Execution Time"],
        "buffers": top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0),
        "node": top["Node Type"],
        "indexes": sorted(set(_indexes(top))),
    }


def run_queries(engine: Engine, params: dict[str, Any], repeats: int) -> dict[str, dict[str, Any]]:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE verdicts"))
    return {name: explain(engine, sql, params, repeats) for name, sql in QUERIES.items()}


def fill(engine: Engine, rows: int, start: datetime) -> float:
    began = time.perf_counter()
    with engine.begin() as connection:
        connection.execute(text(FILL), {"rows": rows, "days": DAYS, "start": start})
    return time.perf_counter() - began


def report(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> None:
    print(f"{'query':30} {'0006 ms':>9} {'0007 ms':>9} {'buffers':>15}  plan at 0006 -> at 0007")
    for name in QUERIES:
        b, a = before[name], after[name]
        buffers = f"{b['buffers']}->{a['buffers']}"
        print(f"{name:30} {b['ms']:9.1f} {a['ms']:9.1f} {buffers:>15}  "
              f"{b['node']} {b['indexes'] or '-'} -> {a['node']} {a['indexes'] or '-'}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin-url", default=DEFAULT_ADMIN_URL, help=f"server to create it on ({DEFAULT_ADMIN_URL})")
    parser.add_argument("--rows", type=int, default=1_000_000, help="synthetic verdicts (1000000)")
    parser.add_argument("--repeats", type=int, default=3, help="EXPLAIN ANALYZE runs per query, best kept (3)")
    args = parser.parse_args(argv)
    admin = create_engine(args.admin_url, isolation_level="AUTOCOMMIT")
    name = f"deepsift_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(args.admin_url).set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url)
    try:
        upgrade_database(url, "0006")
        start = datetime(2026, 9, 1)
        end = start + timedelta(days=DAYS)
        month = start + timedelta(days=DAYS / 4)  # into version 2's time, for 30 days
        params = {"cutoff": end - timedelta(days=1), "today": end - timedelta(days=1), "month": month,
                  "month_end": month + timedelta(days=30)}  # fmt: skip
        print(f"filled {args.rows} verdicts in {fill(engine, args.rows, start):.1f} s (database {name})")
        before = run_queries(engine, params, args.repeats)
        began = time.perf_counter()
        upgrade_database(url, "0007")
        print(f"upgrade 0006 -> 0007 (the index builds) took {time.perf_counter() - began:.1f} s")
        after = run_queries(engine, params, args.repeats)
        size = engine.connect().execute(text("SELECT pg_size_pretty(pg_indexes_size('verdicts'))")).scalar()
        print(f"indexes on verdicts at 0007: {size}")
        report(before, after)
    finally:
        engine.dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
