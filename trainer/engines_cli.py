"""``trainer engines``: list, inspect, promote and roll back the engines in the store (``--engine-store``), and
compare two versions' verdicts in the verdict store (``--db``); ``promote --require-*`` checks the store first."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from datetime import UTC
from typing import TYPE_CHECKING

from deepsift.engines.errors import EngineError
from deepsift.trainer.verdictdb import DB_HELP, database_url

if TYPE_CHECKING:
    from deepsift.engines.store import EngineStore

# Evaluation keys that hold an engine's AUC, by the writers that use them (demo, fewshot, build-engine callers).
_AUC_KEYS = ("val_roc_auc", "roc_auc", "val_auc", "auc")
_COLUMNS = ("NAME", "VERSION", "CURRENT", "BACKEND", "RECIPE", "THRESHOLD", "AUC", "BUILT (UTC)")


def _version(text: str) -> int:
    """A version as the store names it: ``3``, ``v3`` or ``v0003``."""
    try:
        value = int(text.removeprefix("v"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a version number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"versions start at 1, got {text!r}")
    return value


def _store(args: argparse.Namespace) -> EngineStore:
    from deepsift.engines.store import EngineStore

    return EngineStore(args.engine_store)


def _require_engine(store: EngineStore, name: str) -> list[int]:
    versions = store.versions(name)
    if not versions:
        raise EngineError(f"no engine named {name!r} in {store.root}; {store.known_names(name)}")
    return versions


def _auc(evaluation: dict[str, float | int | str]) -> str:
    value = next((evaluation[k] for k in _AUC_KEYS if k in evaluation), None)
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


def _row(store: EngineStore, name: str, version: int, current: int | None) -> tuple[str, ...]:
    from deepsift.engines.manifest import EngineManifest

    marker = "*" if version == current else ""
    try:
        m = EngineManifest.read(store.path(name, version))
    except (OSError, ValueError) as e:
        return (name, f"v{version:04d}", marker, f"(unreadable manifest: {type(e).__name__})", "", "", "", "")
    backend = f"{m.backend.name}/{m.backend.precision}"
    built = m.built_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M")
    return (name, f"v{version:04d}", marker, backend, m.recipe, f"{m.threshold:.3f}", _auc(m.evaluation), built)


def cmd_list(args: argparse.Namespace) -> int:
    store = _store(args)
    names = [args.name] if args.name else store.names()
    if args.name:
        _require_engine(store, args.name)
    rows = [_row(store, n, v, store.current_version(n)) for n in names for v in store.versions(n)]
    if not rows:
        print(f"no engines in {store.root}")
        return 0
    widths = [max(len(r[i]) for r in (_COLUMNS, *rows)) for i in range(len(_COLUMNS))]
    for row in (_COLUMNS, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from deepsift.engines.manifest import EngineManifest

    store = _store(args)
    versions = _require_engine(store, args.name)
    current = store.current_version(args.name)
    version = args.version or current or versions[-1]
    if version not in versions:
        raise EngineError(f"engine {args.name} has no version {version} in {store.root} (versions: {versions})")
    manifest = EngineManifest.read(store.path(args.name, version))
    shown = {
        "current_version": current,
        "manifest": manifest.model_dump(mode="json"),
        "promotions": [asdict(p) for p in store.history(args.name)],
    }
    print(json.dumps(shown, indent=2))
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from deepsift.trainer.compare import Requirements, check_requirements

    store = _store(args)
    versions = _require_engine(store, args.name)
    previous = store.current_version(args.name)
    reason = args.reason
    wanted = Requirements(args.require_shadow_verdicts, args.require_agreement, args.require_reviewed_auc)
    if wanted:
        if args.version not in versions:  # before the database is read
            raise EngineError(f"engine {args.name} has no version {args.version} in {store.root}")
        unmet, met = check_requirements(database_url(args.db), args.name, args.version, previous, wanted)
        if unmet:
            print(f"engine {args.name} v{args.version:04d} NOT promoted: {'; '.join(unmet)}", file=sys.stderr)
            return 2
        reason = "; ".join(filter(None, [reason, f"requirements met: {', '.join(met)}"]))
    store.promote(args.name, args.version, reason=reason)
    was = f"v{previous:04d}" if previous is not None else "none"
    print(f"engine {args.name}: current is v{args.version:04d} (was {was})")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from deepsift.trainer.compare import compare, format_comparison, read_pairs

    pairs = read_pairs(database_url(args.db), args.name, args.a, args.b)
    if not pairs:
        raise EngineError(f"no job has verdicts of both {args.name} v{args.a:04d} and v{args.b:04d} in the store")
    figures = compare(pairs)
    if args.json:
        print(json.dumps({"name": args.name, "a": args.a, "b": args.b, **figures}, indent=2))
    else:
        print("\n".join(format_comparison(figures, args.name, args.a, args.b)))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    store = _store(args)
    _require_engine(store, args.name)
    previous = store.current_version(args.name)
    version = store.rollback(args.name)
    print(f"engine {args.name} rolled back: current is v{version:04d} (was v{previous:04d})")
    return 0


def add_engines_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``engines list|show|promote|compare|rollback`` to the ``trainer`` command."""
    engines = commands.add_parser("engines", help="list, inspect, promote and roll back stored engines")
    sub = engines.add_subparsers(dest="engines_command", required=True)

    listing = sub.add_parser("list", help="every stored version: backend, recipe, threshold, AUC, build time")
    listing.add_argument("name", nargs="?", help="only this engine")
    listing.set_defaults(handler=cmd_list)

    show = sub.add_parser("show", help="a version's manifest (JSON) with the engine's promotion history")
    show.add_argument("name", help="engine name in the store")
    show.add_argument("--version", type=_version, help="default: the current version, else the newest")
    show.set_defaults(handler=cmd_show)

    promote = sub.add_parser("promote", help="make a stored version current")
    promote.add_argument("name", help="engine name in the store")
    promote.add_argument("version", type=_version, help="e.g. 3 or v0003")
    promote.add_argument("--reason", help="recorded in the promotion history")
    promote.add_argument("--db", help=DB_HELP + "; read only with a --require-* option")
    promote.add_argument("--require-shadow-verdicts", type=int, metavar="N",
                         help="refuse unless the version has at least N shadow verdicts in the store")  # fmt: skip
    promote.add_argument("--require-agreement", type=float, metavar="X",
                         help="refuse unless its real/fake decisions agree with the current version's on a share "
                         ">= X of the jobs both decided")  # fmt: skip
    promote.add_argument("--require-reviewed-auc", type=float, metavar="Y",
                         help="refuse unless its ROC-AUC on reviewed jobs (newest review) is >= Y")  # fmt: skip
    promote.set_defaults(handler=cmd_promote)

    compare = sub.add_parser("compare", help="two versions on the same jobs: agreement, flips, P(fake) shift, reviews")
    compare.add_argument("name", help="engine name (as in verdicts.engine_name)")
    compare.add_argument("a", type=_version, help="the version compared against, e.g. the serving one")
    compare.add_argument("b", type=_version, help="the other version, e.g. a shadow")
    compare.add_argument("--db", help=DB_HELP)
    compare.add_argument("--json", action="store_true", help="print the figures as JSON")
    compare.set_defaults(handler=cmd_compare)

    rollback = sub.add_parser("rollback", help="make the version current before the present one current again")
    rollback.add_argument("name", help="engine name in the store")
    rollback.set_defaults(handler=cmd_rollback)
