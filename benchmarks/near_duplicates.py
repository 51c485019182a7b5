"""Near-duplicate look-up time at scale: ``daemon.uploads.UploadHistory.near_duplicates`` over N stored pHashes.

Fills a migrated database with synthetic verdicts of 32 hashed frames each (uniformly random 64-bit hashes: N
hashes in all), then times look-ups of planted near-duplicates (a stored hash with up to ``--max-distance``
bits flipped) for an image (one hash) and for a video (8 hashes of one stored verdict), and checks that each
look-up finds its planted verdict. Prints the median and p95 time per look-up, the candidate rows the chunk
indexes return, and on PostgreSQL the plan of the candidate query (index scans OR-ed in a bitmap, no scan of
the table). The database is a throwaway PostgreSQL one (as ``benchmarks/stream.py``) or ``--database-url``.

    .venv/bin/python benchmarks/near_duplicates.py                        # 1 M hashes on PostgreSQL, ~2 min
    .venv/bin/python benchmarks/near_duplicates.py --database-url sqlite:///var/nd.db --hashes 1000000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlalchemy import insert, text

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stream import database

from deepsift.daemon.db import make_database
from deepsift.daemon.models import Verdict, VerdictHash
from deepsift.daemon.records import FrameHashRecord
from deepsift.daemon.repository import VerdictRepository
from deepsift.daemon.uploads import NearDuplicatePolicy, UploadHistory
from deepsift.engines.perceptual import chunks, signed

FRAMES = 32
BATCH = 20_000


def populate(url: str, n_hashes: int, rng: np.random.Generator) -> np.ndarray:
    """Store ``n_hashes`` random hashes, ``FRAMES`` per verdict; returns them, shape (verdicts, FRAMES)."""
    n_verdicts = n_hashes // FRAMES
    hashes = rng.integers(0, 2**63, (n_verdicts, FRAMES), dtype=np.int64).astype(np.uint64) * np.uint64(2)
    hashes |= rng.integers(0, 2, (n_verdicts, FRAMES), dtype=np.int64).astype(np.uint64)  # the low bit too
    engine = make_database(url)
    try:
        with engine.begin() as c:
            c.execute(insert(Verdict), [_verdict_row(i) for i in range(n_verdicts)])
            first = c.execute(text("SELECT MIN(id) FROM verdicts")).scalar_one()
        rows = (
            {"verdict_id": first + v, "frame_index": f, "phash": signed(int(h)), **dict(zip(("c0", "c1", "c2", "c3"),
             chunks(int(h)), strict=True))}
            for v in range(n_verdicts) for f, h in enumerate(hashes[v])
        )  # fmt: skip
        batch: list[dict[str, int]] = []
        for row in rows:
            batch.append(row)
            if len(batch) == BATCH:
                with engine.begin() as c:
                    c.execute(insert(VerdictHash), batch)
                batch = []
        if batch:
            with engine.begin() as c:
                c.execute(insert(VerdictHash), batch)
        with engine.begin() as c:
            if engine.dialect.name == "postgresql":
                c.execute(text("ANALYZE verdict_hashes"))
            else:
                c.execute(text("ANALYZE"))
        return hashes
    finally:
        engine.dispose()


def _verdict_row(i: int) -> dict[str, object]:
    return {
        "job_id": f"bench-{i}", "source": "scan", "media_uri": f"file:///bench/{i}.mp4", "status": "ok",
        "engine_name": "bench", "engine_version": 1, "engine_artifact_sha256": "0" * 64, "timings_ms": {},
        "job_metadata": {}, "media_sha256": f"{i:064x}",
    }  # fmt: skip


def flipped(value: int, bits: int, rng: np.random.Generator) -> int:
    for bit in rng.choice(64, bits, replace=False):
        value ^= 1 << int(bit)
    return value


def time_lookups(url: str, hashes: np.ndarray, args: argparse.Namespace, rng: np.random.Generator) -> None:
    engine = make_database(url)
    history = UploadHistory(VerdictRepository(engine))
    policy = NearDuplicatePolicy(max_distance=args.max_distance)
    first = _first_id(engine)
    try:
        for kind, frames in (("image", 1), ("video", 8)):
            times, candidates, found = [], [], 0
            for _ in range(args.lookups):
                v = int(rng.integers(len(hashes)))
                picks = np.linspace(0, FRAMES - 1, frames).astype(int)
                query = [FrameHashRecord(i, flipped(int(hashes[v, p]), int(rng.integers(0, args.max_distance + 1)),
                                                    rng)) for i, p in enumerate(picks)]  # fmt: skip
                started = time.perf_counter()
                links = history.near_duplicates(query, policy)
                times.append((time.perf_counter() - started) * 1000.0)
                found += any(link.earlier_verdict_id == first + v for link in links)
                candidates.append(len(history._candidates([q.phash for q in query], args.max_distance)))
            times.sort()
            print(f"{kind:5s} ({frames} hash{'es' if frames > 1 else ''}): median {statistics.median(times):7.1f} ms"
                  f"  p95 {times[int(0.95 * (len(times) - 1))]:7.1f} ms  candidates/look-up "
                  f"{statistics.mean(candidates):8.0f}  planted found {found}/{args.lookups}")  # fmt: skip
        if engine.dialect.name == "postgresql":
            _explain(engine, int(hashes[0, 0]), args.max_distance)
    finally:
        engine.dispose()


def _first_id(engine: object) -> int:
    with engine.connect() as c:  # type: ignore[attr-defined]
        return int(c.execute(text("SELECT MIN(id) FROM verdicts")).scalar_one())


def _explain(engine: object, value: int, max_distance: int) -> None:
    from deepsift.engines.perceptual import candidate_chunks

    wanted = candidate_chunks([value], max_distance)
    clauses = " OR ".join(f"c{i} = ANY(:v{i})" for i in range(4))
    params = {f"v{i}": sorted(values) for i, values in enumerate(wanted)}
    with engine.connect() as c:  # type: ignore[attr-defined]
        plan = c.execute(text(f"EXPLAIN ANALYZE SELECT verdict_id, phash FROM verdict_hashes WHERE {clauses}"), params)
        print("PostgreSQL plan of one image's candidate query:")
        for (line,) in plan:
            print("   ", line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hashes", type=int, default=1_000_000, help="stored hashes (32 per synthetic verdict)")
    parser.add_argument("--lookups", type=int, default=50, help="look-ups timed per kind")
    parser.add_argument("--max-distance", type=int, default=NearDuplicatePolicy().max_distance)
    parser.add_argument("--database-url", help="a database to fill (default: a throwaway PostgreSQL one)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as scratch, database(args.database_url, Path(scratch)) as (url, where):
        started = time.perf_counter()
        hashes = populate(url, args.hashes, rng)
        print(f"{where}: {hashes.size:,} hashes of {len(hashes):,} verdicts stored in "
              f"{time.perf_counter() - started:.0f} s; max distance {args.max_distance}")  # fmt: skip
        time_lookups(url, hashes, args, rng)


if __name__ == "__main__":
    main()
