"""``trainer import-dataset KIND ROOT --out M.jsonl``: a published dataset in its own layout → a dataset manifest.

The manifest lists the dataset's media where they lie (paths relative to the manifest); ``trainer prepare`` then
cuts them into the crops or frames an engine sees, keeping each media's split (``trainer.datasets``).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_import_dataset(args: argparse.Namespace) -> int:
    from deepsift.trainer.datasets import OFFICIAL, ImportOptions, SplitSpec, import_dataset

    split = args.split if args.split == OFFICIAL else SplitSpec.parse(args.split) if args.split else None
    options = ImportOptions(compression=args.compression, real_class=args.real_class)
    summary = import_dataset(args.kind, args.root, args.out, seed=args.seed, split=split, options=options)
    total = sum(sum(c.values()) for c in summary.counts.values())
    print(f"{total} {summary.kind} items in {summary.groups} groups → {summary.manifest} ({summary.protocol})")
    for name, counts in summary.counts.items():
        print(f"  {name:5} {sum(counts.values()):7}  " + ", ".join(f"{k} {n}" for k, n in counts.items()))
        if not counts and name == "test":
            print("note: no test split; report on val (`trainer evaluate --split val`), as seed 000 does on SID_Set")
        elif not counts:
            print(f"warning: the {name} split is empty; fit needs train and val (try --split 70/15/15)")
    if summary.groups_across_splits:
        print(f"note: the dataset's own split puts {summary.groups_across_splits} groups in more than one split")
    print(f"next: trainer prepare --data {summary.manifest} --recipe R --out DIR")
    return 0


def add_import_dataset_command(commands: argparse._SubParsersAction) -> None:
    """Add ``import-dataset`` to the ``trainer`` command."""
    from deepsift.trainer.datasets import IMPORTERS

    parser = commands.add_parser(
        "import-dataset",
        help="a published dataset (FF++, DFDC, Celeb-DF, CiFake, SID_Set, folders) → manifest with splits",
    )
    parser.add_argument("kind", choices=IMPORTERS.names(), help="the dataset's layout (trainer.datasets)")
    parser.add_argument("root", type=Path, help="the dataset's folder, as downloaded")
    parser.add_argument("--out", type=Path, required=True, help="manifest to write (.jsonl or .csv); sid_set "
                        "extracts its embedded images to <manifest stem>-media/ beside it")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="key of the hash that orders groups when splits are dealt")
    parser.add_argument("--split", metavar="SHARES", help="deal all items anew, grouped: train/val/test (70/15/15) "
                        "or train/test (90/10, 9:1); 'official': the dataset's own splits only, none carved "
                        "(SID_Set as seed 000 §2.2 trains and reports); default: the dataset's own splits, what "
                        "it lacks carved from its training items")  # fmt: skip
    parser.add_argument("--compression", choices=["raw", "c23", "c40"], help="FF++: compression level to import "
                        "(default: the only one present)")  # fmt: skip
    parser.add_argument("--real-class", default="real", help="folders: the class folder holding real media")
    parser.set_defaults(handler=cmd_import_dataset)
