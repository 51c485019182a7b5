"""Offsets are committed only up to the lowest job not yet stored, per partition, and only by their owner."""

from __future__ import annotations

from deepsift.daemon.stream.offsets import OffsetLedger

P0, P1 = ("jobs", 0), ("jobs", 1)


def _ledger_with(offsets: dict[tuple[str, int], list[int]]) -> tuple[OffsetLedger, dict]:
    ledger = OffsetLedger()
    ledger.assign(set(offsets))
    tickets = {(key, o): ledger.take(*key, o) for key, os in offsets.items() for o in os}
    return ledger, tickets


def test_out_of_order_completion_commits_only_below_the_lowest_unfinished():
    # Given offsets 10..13 taken on one partition
    ledger, t = _ledger_with({P0: [10, 11, 12, 13]})
    # When 11 and 13 finish first, nothing may be committed: 10 is not stored yet
    ledger.finish(t[P0, 11])
    ledger.finish(t[P0, 13])
    assert ledger.ready() == {P0: 10}  # "commit 10" = everything below 10 is done (nothing new)
    ledger.committed({P0: 10})
    assert ledger.ready() == {}
    # When 10 finishes, the commit may move to 12 (12 is still open), not past it
    ledger.finish(t[P0, 10])
    assert ledger.ready() == {P0: 12}
    ledger.committed({P0: 12})
    # When 12 finishes, everything taken is done: commit one past the highest
    ledger.finish(t[P0, 12])
    assert ledger.ready() == {P0: 14}
    assert ledger.in_flight() == 0


def test_partitions_are_independent():
    ledger, t = _ledger_with({P0: [0, 1], P1: [5]})
    ledger.finish(t[P1, 5])
    ledger.finish(t[P0, 1])
    assert ledger.ready() == {P0: 0, P1: 6}
    assert ledger.in_flight() == 1


def test_a_revocation_reports_what_is_finished_and_a_kept_partition_goes_on_as_it_was():
    ledger, t = _ledger_with({P0: [0, 1, 2], P1: [7]})
    ledger.finish(t[P0, 0])
    # When a rebalance starts, what is finished may be committed (P1: nothing below 7); nothing is forgotten yet
    assert ledger.revoking({P0, P1}) == {P0: 1, P1: 7}
    # When the new assignment keeps P0, its work in flight is still ours and finishes normally
    assert ledger.assign({P0}) == {P1}
    assert ledger.finish(t[P0, 1]) and ledger.is_current(t[P0, 2])
    assert ledger.ready() == {P0: 2}


def test_a_partition_given_up_makes_its_tickets_stale_even_if_it_comes_back():
    ledger, t = _ledger_with({P0: [0, 1], P1: [5]})
    assert ledger.assign({P1}) == {P0}
    assert not ledger.finish(t[P0, 0]) and not ledger.is_current(t[P0, 1])
    assert ledger.take("jobs", 0, 2) is None  # a fetch that raced the revocation
    assert ledger.in_flight() == 1 and set(ledger.ready()) <= {P1}
    ledger.assign({P0, P1})
    fresh = ledger.take("jobs", 0, 1)
    assert fresh is not None and fresh.epoch != t[P0, 1].epoch
    assert not ledger.finish(t[P0, 1]) and ledger.finish(fresh)


def test_a_partition_never_taken_from_has_nothing_to_commit():
    ledger = OffsetLedger()
    ledger.assign({P0})
    assert ledger.ready() == {} and ledger.revoking({P0}) == {}


def test_commits_never_move_backwards_after_an_offset_reset():
    ledger, t = _ledger_with({P0: [10]})
    ledger.finish(t[P0, 10])
    ledger.committed(ledger.ready())
    # When the fetch position is reset to older messages (retention, a reset policy), they are redone
    old = ledger.take("jobs", 0, 5)
    assert ledger.ready() == {}
    ledger.finish(old)
    assert ledger.ready() == {} and ledger.last_committed(P0) == 11
