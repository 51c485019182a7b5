"""The seeded splitter: groups of items (a video's frames, a fake and its source footage, one identity's videos)
dealt whole to train/val/test in given proportions.

Groups are ordered by a keyed hash of their name (``seed`` is the key), not by Python's ``random``, so a split is
the same on every machine and version; then each group goes to the split where the middle of its items falls on
the cumulative count, which keeps the shares of *items* near the target even when groups differ in size.

A dataset's own split is kept by default (seed 000 and SD² use the official partitions where there are some). What
it lacks is carved from its training items: a dataset with no split at all is dealt 70/15/15 (seed 000 §2.2), one
with train/test only gets a val split of 15/85 of its training items, grouped. ``--split`` re-deals everything.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass

from deepsift.trainer.datasets.common import SPLITS, DatasetLayoutError, Item, Split


@dataclass(frozen=True)
class SplitSpec:
    """Shares of the splits; ``70/15/15`` is train/val/test (seed 000 §2.2), ``90/10`` or ``9:1`` train/test (SD²
    Appendix A.3, where a dataset is not pre-split)."""

    train: float
    val: float
    test: float

    @classmethod
    def parse(cls, text: str) -> SplitSpec:
        parts = re.split(r"[/:]", text.strip())
        try:
            numbers = [float(p) for p in parts]
        except ValueError:
            numbers = []
        if len(numbers) not in (2, 3) or min(numbers) < 0 or numbers[0] <= 0:
            raise DatasetLayoutError(f"split {text!r}: expected train/val/test (70/15/15) or train/test (90/10, 9:1)")
        if len(numbers) == 2:
            numbers.insert(1, 0.0)
        total = sum(numbers)
        return cls(*(n / total for n in numbers))

    def shares(self) -> dict[Split, float]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def __str__(self) -> str:
        shares = (self.train, self.val, self.test) if self.val else (self.train, self.test)
        return "/".join(f"{100 * s:g}" for s in shares)


PAPER_000 = SplitSpec(0.70, 0.15, 0.15)
OFFICIAL = "official"  # ``--split official``: the dataset's own splits only, none carved (SID_Set as seed 000 §2.2)


def _order(group: str, seed: int) -> bytes:
    return hashlib.sha256(f"{seed}:{group}".encode()).digest()


def deal_groups(sizes: dict[str, int], shares: dict[Split, float], seed: int) -> dict[str, Split]:
    """Each group's split: groups in keyed-hash order, a group where the middle of its items falls."""
    total = sum(sizes.values())
    order = sorted(sizes, key=lambda g: _order(g, seed))
    bounds, edge = [], 0.0
    for split in (s for s in SPLITS if shares.get(s, 0.0) > 0):
        edge += shares[split]
        bounds.append((edge, split))
    dealt, seen = {}, 0
    for group in order:
        middle = (seen + sizes[group] / 2) / total
        dealt[group] = next((s for b, s in bounds if middle < b), bounds[-1][1])
        seen += sizes[group]
    return dealt


def assign_splits(items: list[Item], spec: SplitSpec | str | None, seed: int) -> tuple[list[Split], str]:
    """Every item's split, and the protocol in words: ``spec`` re-deals all groups; without it the dataset's own
    splits stay and the splits it lacks are carved, grouped, from its training items (module docstring);
    ``OFFICIAL`` keeps the dataset's own splits and carves nothing."""
    if spec == OFFICIAL:
        if any(i.split is None for i in items):
            raise DatasetLayoutError("--split official: this dataset has media without a split of its own")
        present = [s for s in SPLITS if any(i.split == s for i in items)]
        return [i.split for i in items], f"the dataset's own splits only ({', '.join(present)}), none carved"
    if isinstance(spec, SplitSpec):
        dealt = deal_groups(Counter(i.group for i in items), spec.shares(), seed)
        return [dealt[i.group] for i in items], f"seeded {spec} split (seed {seed}), grouped"
    official = {i.split for i in items} - {None}
    missing = [s for s in ("val", "test") if s not in official]
    if not missing:
        return [i.split or "train" for i in items], "the dataset's own splits"
    shares = {s: PAPER_000.shares()[s] for s in ("train", *missing)}
    shares = {s: v / sum(shares.values()) for s, v in shares.items()}
    pool = Counter(i.group for i in items if i.split in (None, "train"))
    dealt = deal_groups(pool, shares, seed)
    dealing = f"{'/'.join(shares)} {'/'.join(f'{round(100 * v)}' for v in shares.values())} by seed {seed}, grouped"
    if not official:
        protocol = f"the dataset has no split: dealt {dealing}"
    else:
        protocol = f"the dataset's own splits; {' and '.join(missing)} carved from its train items ({dealing})"
    return [i.split if i.split not in (None, "train") else dealt[i.group] for i in items], protocol


def groups_across_splits(items: list[Item], splits: list[Split]) -> int:
    """How many groups have items in more than one split (only a dataset's own split can do that)."""
    seen: dict[str, set[Split]] = {}
    for item, split in zip(items, splits, strict=True):
        seen.setdefault(item.group, set()).add(split)
    return sum(len(s) > 1 for s in seen.values())
