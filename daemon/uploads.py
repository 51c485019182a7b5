"""What the verdict store knows about an upload before it is judged: an earlier verdict of the very same bytes
by the same engine version (an exact re-upload, answered from it), and earlier verdicts of perceptually similar
media (near-duplicates: re-encodes, resizes, light edits), found through the hash chunks of ``verdict_hashes``.

Like ``daemon.repository`` this module reads the ORM models; the pipeline asks it through ``UploadHistory``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import bindparam, or_, select

from deepsift.daemon.db import session_factory, translate_outages
from deepsift.daemon.models import Verdict, VerdictHash
from deepsift.daemon.pipeline.records import ReusedVerdict
from deepsift.daemon.records import EngineIdentity, FrameHashRecord, NearDuplicateRecord
from deepsift.daemon.repository import VerdictRepository
from deepsift.daemon.storable import safe_text
from deepsift.engines.perceptual import N_CHUNKS, candidate_chunks, hamming, unsigned

REUSABLE_STATUSES = ("ok", "abstained")  # judgements of the bytes; errors may be about the fetch or the store


@dataclass(frozen=True)
class ReusePolicy:
    """Whether exact re-uploads are answered from an earlier verdict, and how old that verdict may be."""

    enabled: bool = True
    max_age_s: float | None = None  # None: any age


@dataclass(frozen=True)
class NearDuplicatePolicy:
    """How near-duplicates are looked for: a frame matches within ``max_distance`` bits of pHash; an earlier
    verdict is linked when at least ``min_fraction`` of this media's looked-up frames match one of its frames."""

    enabled: bool = True
    max_distance: int = 7  # of 64 bits; 7 keeps the chunk search at radius 1 (17 values per chunk)
    min_fraction: float = 0.5
    query_frames: int = 8  # a video looks up at most this many of its hashed frames, evenly spaced
    limit: int = 10  # links per verdict, nearest first


class UploadHistory:
    """Re-upload and near-duplicate look-ups over the verdict store; outages surface as ``RetryableError``."""

    def __init__(self, repository: VerdictRepository) -> None:
        self._repository = repository
        self._sessions = session_factory(repository.engine)

    def reusable(
        self,
        sha256: str,
        engine: EngineIdentity,
        judged_with: str,
        policy: ReusePolicy,
    ) -> ReusedVerdict | None:
        """The newest verdict of its own (not itself reused) this engine gave these bytes under the same judge
        settings (``JudgeConfig.fingerprint``), within the policy's age; None when there is none."""
        if not policy.enabled:
            return None
        query = (
            select(Verdict.id)
            .where(
                Verdict.media_sha256 == sha256,
                Verdict.engine_name == safe_text(engine.name),
                Verdict.engine_version == engine.version,
                Verdict.engine_artifact_sha256 == safe_text(engine.artifact_sha256),
                Verdict.status.in_(REUSABLE_STATUSES),
                Verdict.reused_from.is_(None),
                Verdict.judged_with == judged_with,
            )
            .order_by(Verdict.id.desc())
            .limit(1)
        )
        if policy.max_age_s is not None:
            query = query.where(Verdict.created_at >= datetime.now(UTC) - timedelta(seconds=policy.max_age_s))
        with translate_outages(), self._sessions() as session:
            found = session.scalar(query)
        return None if found is None else ReusedVerdict(found, self._repository.get(found))

    def near_duplicates(
        self, hashes: Sequence[FrameHashRecord], policy: NearDuplicatePolicy, sha256: str | None = None
    ) -> tuple[NearDuplicateRecord, ...]:
        """Earlier verdicts whose frames match enough of these frames' hashes, nearest first; verdicts of the same
        bytes (``sha256``: re-scorings, re-uploads judged afresh) are exact copies, not near-duplicates."""
        if not policy.enabled or not hashes:
            return ()
        query_hashes = _evenly_spaced([h.phash for h in hashes], policy.query_frames)
        candidates = self._candidates(query_hashes, policy.max_distance, sha256)
        by_verdict: dict[int, list[int]] = defaultdict(list)
        for verdict_id, stored in candidates:
            by_verdict[verdict_id].append(stored)
        needed = max(1, math.ceil(policy.min_fraction * len(query_hashes)))
        links = []
        for verdict_id, stored in by_verdict.items():
            nearest = [min(hamming(q, s) for s in stored) for q in query_hashes]
            matched = [d for d in nearest if d <= policy.max_distance]
            if len(matched) >= needed:
                links.append(NearDuplicateRecord(verdict_id, min(matched), len(matched), len(query_hashes)))
        links.sort(key=lambda link: (link.distance, -link.matching_frames, -link.earlier_verdict_id))
        return tuple(links[: policy.limit])

    def _candidates(self, values: Sequence[int], max_distance: int, sha256: str | None = None) -> list[tuple[int, int]]:
        """(verdict id, unsigned hash) of stored hashes sharing a chunk neighbourhood with one of ``values``, of
        verdicts of other bytes than ``sha256``."""
        wanted = candidate_chunks(values, max_distance)
        columns = [VerdictHash.c0, VerdictHash.c1, VerdictHash.c2, VerdictHash.c3][:N_CHUNKS]
        clauses = [column.in_(bindparam(f"chunk{i}", expanding=True)) for i, column in enumerate(columns) if wanted[i]]
        query = select(VerdictHash.verdict_id, VerdictHash.phash).where(or_(*clauses))
        if sha256 is not None:
            query = query.join(Verdict, Verdict.id == VerdictHash.verdict_id).where(
                or_(Verdict.media_sha256.is_(None), Verdict.media_sha256 != sha256)
            )
        parameters = {f"chunk{i}": sorted(values_i) for i, values_i in enumerate(wanted)}
        with translate_outages(), self._sessions() as session:
            rows = session.execute(query, parameters).all()
        return [(verdict_id, unsigned(stored)) for verdict_id, stored in rows]


def _evenly_spaced(values: Sequence[int], n: int) -> list[int]:
    if len(values) <= n:
        return list(values)
    step = len(values) / n
    return [values[int(i * step)] for i in range(n)]
