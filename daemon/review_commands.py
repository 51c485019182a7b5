"""``daemon review add`` and ``daemon review queue``: the reviewer's two commands over ``daemon.reviews``."""

from __future__ import annotations

import argparse
import getpass
import json
from typing import TextIO

from deepsift.daemon.reviews import QUEUE_REASONS, QueueItem, ReviewRefused, Reviews
from deepsift.daemon.settings import Settings

REVIEW_REFUSED = 3  # exit status: no such verdict or job, or a label that does not fit it


def cmd_review_add(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    with _ReviewsOf(settings) as reviews:
        try:
            verdict_id = args.verdict_id if args.job_id is None else reviews.newest_serving_verdict(args.job_id)
            review = reviews.add(verdict_id, args.label, args.reviewer or _login(), args.manipulation, args.note)
        except ReviewRefused as e:
            print(f"daemon review add: {e}", file=out)
            return REVIEW_REFUSED
    what = review.label if review.manipulation is None else f"{review.label} ({review.manipulation})"
    print(f"review {review.id} of verdict {review.verdict_id} (job {review.job_id}): {what} by {review.reviewer}",
          file=out)  # fmt: skip
    return 0


def cmd_review_queue(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    with _ReviewsOf(settings) as reviews:
        items = reviews.queue(args.reason, args.limit)
    if args.json:
        for item in items:
            print(json.dumps(_jsonable(item)), file=out)
        return 0
    print(f"{'verdict':>8}  {'reason':<12}  {'engine':<20}  {'label':<10}  {'p_fake':>6}  job", file=out)
    for item in items:
        engine = f"{item.engine_name} v{item.engine_version}"
        p = "" if item.p_fake is None else f"{item.p_fake:.3f}"
        print(f"{item.verdict_id:>8}  {item.reason:<12}  {engine:<20}  {item.label or '':<10}  {p:>6}  {item.job_id}",
              file=out)  # fmt: skip
    print(f"{len(items)} verdicts to review" + (f" (first {args.limit})" if len(items) == args.limit else ""), file=out)
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in a bare container
        return ""


def _jsonable(item: QueueItem) -> dict[str, object]:
    return {**item.__dict__, "created_at": item.created_at.isoformat()}


class _ReviewsOf:
    """``Reviews`` over the settings' database, disposed of on exit."""

    def __init__(self, settings: Settings) -> None:
        from deepsift.daemon.db import make_database, require_current_schema
        from deepsift.daemon.repository import VerdictRepository

        self._database = make_database(settings.database_url)
        require_current_schema(self._database)
        self._reviews = Reviews(VerdictRepository(self._database))

    def __enter__(self) -> Reviews:
        return self._reviews

    def __exit__(self, *_exc: object) -> None:
        self._database.dispose()


def add_review_parser(commands: argparse._SubParsersAction) -> None:
    review = commands.add_parser("review", help="record human reviews of verdicts; list what to review")
    sub = review.add_subparsers(dest="review_command", required=True)
    add = sub.add_parser(
        "add", help="append a review of a verdict (the newest review of a job overrides its label)",
        epilog=f"exit status: 0 recorded, {REVIEW_REFUSED} no such verdict or job, or a label that does not fit it",
    )  # fmt: skip
    which = add.add_mutually_exclusive_group(required=True)
    which.add_argument("verdict_id", nargs="?", type=int, help="the reviewed verdict's id (verdicts.id)")
    which.add_argument("--job-id", help="review the job's newest serving verdict instead")
    add.add_argument("--label", required=True, choices=("real", "fake"), help="what the media really is")
    add.add_argument("--manipulation", help="for a fake judged by a multi-class engine: its class, e.g. tampered")
    add.add_argument("--reviewer", help="who reviewed (default: the login name)")
    add.add_argument("--note", help="free text kept with the review")
    add.set_defaults(handler=cmd_review_add)
    queue = sub.add_parser(
        "queue", help="unreviewed verdicts worth a look: uncertain, shadow disagreements, a sample of confident ones"
    )
    queue.add_argument("--reason", choices=QUEUE_REASONS, help="only this part of the queue (default: all three)")
    queue.add_argument("--limit", type=_positive, default=50, help="at most this many verdicts")
    queue.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    queue.set_defaults(handler=cmd_review_queue)
