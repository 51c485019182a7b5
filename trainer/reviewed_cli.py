"""``trainer export-reviews``: the reviewed media in the verdict store → a dataset manifest (``trainer.reviewed``).

The manifest lists the media files themselves; ``trainer prepare --data MANIFEST --recipe R --out CROPS`` cuts
them into the crops an engine sees, with the daemon's decode and face code, keeping each media's split.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from deepsift.trainer.verdictdb import DB_HELP, database_url


def cmd_export_reviews(args: argparse.Namespace) -> int:
    from collections import Counter

    from deepsift.trainer.reviewed import export_reviews

    summary = export_reviews(database_url(args.db), args.out, args.seed, args.val_fraction, args.test_fraction)
    counts = summary.counts()
    splits = ", ".join(f"{s} {c['real']} real / {c['fake']} fake" for s, c in counts.items())
    print(f"{summary.reviewed_jobs} reviewed jobs → {len(summary.exported)} media in {summary.manifest} ({splits})")
    for split, count in counts.items():
        if not count["real"] or not count["fake"]:
            print(f"warning: the {split} split has {count['real']} real and {count['fake']} fake media; fit and the "
                  "gates need both (review more, or try another --seed)")  # fmt: skip
    if summary.skipped:
        reasons = Counter(s.reason for s in summary.skipped)
        print(f"{len(summary.skipped)} skipped: " + ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())))
    if summary.superseded:
        print(f"{summary.superseded} older reviews of the same content superseded ({summary.conflicting} disagreed)")
    print(f"provenance in {summary.provenance}; next: trainer prepare --data {summary.manifest} --recipe R --out DIR")
    return 0


def add_export_reviews_command(commands: argparse._SubParsersAction) -> None:
    """Add ``export-reviews`` to the ``trainer`` command."""
    export = commands.add_parser(
        "export-reviews", help="reviewed media in the verdict store → dataset manifest, splits grouped by content"
    )
    export.add_argument("--out", type=Path, required=True, help="manifest to write (.jsonl or .csv)")
    export.add_argument("--db", help=DB_HELP)
    export.add_argument("--seed", type=int, default=0, help="key of the hash that assigns each media its split")
    export.add_argument("--val-fraction", type=float, default=0.15, help="share of media in the val split")
    export.add_argument("--test-fraction", type=float, default=0.15, help="share of media in the test split")
    export.set_defaults(handler=cmd_export_reviews)
