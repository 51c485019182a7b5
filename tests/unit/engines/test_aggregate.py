"""Frame/face scores → track scores → one media score, by a selectable rule, on hand-checkable numbers."""

from __future__ import annotations

import pytest

from deepsift.engines.aggregate import RULES, AggregationRule, ScoredItem, aggregate

SCORES = [0.1, 0.9, 0.3, 0.7, 0.5]  # sorted: 0.1 0.3 0.5 0.7 0.9


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mean", 0.5),
        ("max", 0.9),
        ("topk", (0.9 + 0.7) / 2),  # default 25 %: ceil(5 · 0.25) = 2
        ("topk:0.5", (0.9 + 0.7 + 0.5) / 3),  # ceil(2.5) = 3
        ("topk:0.2", 0.9),  # exactly one
        ("topk:1", 0.5),  # everything: the mean
        ("quantile:0.5", 0.5),  # the median
        ("quantile", 0.82),  # default q = 0.9: linear between 0.7 (q=.75) and 0.9 (q=1) → 0.7 + 0.6 · 0.2
        ("quantile:1", 0.9),
    ],
)
def test_each_rule_reduces_a_hand_checkable_list(text: str, expected: float) -> None:
    assert AggregationRule.parse(text).reduce(SCORES) == pytest.approx(expected)


def test_every_registered_rule_stays_within_the_scores_and_is_order_free() -> None:
    # Contract over the registry, so a new rule is covered: bounded by min/max, independent of frame order
    for name in RULES:
        rule = AggregationRule.parse(name)
        assert min(SCORES) <= rule.reduce(SCORES) <= max(SCORES)
        assert rule.reduce(SCORES) == pytest.approx(rule.reduce(SCORES[::-1]))
        assert rule.reduce([0.25]) == pytest.approx(0.25)


def test_parse_reads_name_and_parameter_and_prints_back() -> None:
    rule = AggregationRule.parse("topk:0.5")
    assert (rule.name, rule.param) == ("topk", 0.5)
    assert str(rule) == "topk:0.5" and AggregationRule.parse(str(rule)) == rule
    assert AggregationRule.parse("max") == AggregationRule("max", None) and str(AggregationRule("max")) == "max"


@pytest.mark.parametrize(
    "text",
    ["median", "", "TOPK", "top k", "topk:0", "topk:1.5", "topk:-0.1", "topk:abc", "quantile:nan", "mean:0.5", "max:1"],
)
def test_bad_names_and_parameters_are_rejected_with_value_error(text: str) -> None:
    # ValueError (not KeyError) so that pydantic settings validation turns it into a clean validation error
    with pytest.raises(ValueError):
        AggregationRule.parse(text)


def items(track_id: int | None, scores: list[float], first_frame: int = 0) -> list[ScoredItem]:
    return [ScoredItem(frame_index=first_frame + i, p_fake=p, track_id=track_id) for i, p in enumerate(scores)]


def test_one_fake_track_among_real_ones_makes_the_media_fake() -> None:
    # Given two real faces and one fake face, all seen in the same ten frames
    scored = items(1, [0.1] * 10) + items(2, [0.9] * 10) + items(3, [0.2] * 10)

    # When aggregated with the mean rule
    media = aggregate(scored, AggregationRule.parse("mean"))

    # Then the fake track decides: the media score is that track's score, not the average over faces
    assert media.decisive_track == 2
    assert media.p_fake == pytest.approx(0.9)
    assert [(t.track_id, t.n_frames) for t in media.tracks] == [(1, 10), (2, 10), (3, 10)]
    assert [t.p_fake for t in media.tracks] == pytest.approx([0.1, 0.9, 0.2])


def test_a_one_frame_spurious_track_cannot_decide() -> None:
    # Given a real face seen in 20 frames and a spurious detection in one frame with a very high score
    scored = items(1, [0.2] * 20) + items(7, [0.99], first_frame=5)

    # When at least 10 % of the frames (2 of 20) are needed to decide
    media = aggregate(scored, AggregationRule.parse("max"), min_track_fraction=0.1)

    # Then the real face decides, while the spurious track is still reported
    assert media.decisive_track == 1 and media.p_fake == pytest.approx(0.2)
    spurious = next(t for t in media.tracks if t.track_id == 7)
    assert (spurious.n_frames, spurious.first_frame, spurious.last_frame) == (1, 5, 5)


def test_without_a_minimum_fraction_the_spurious_track_decides() -> None:
    # The control for the test above: the same input with min_track_fraction 0 is decided by the one-frame track
    scored = items(1, [0.2] * 20) + items(7, [0.99], first_frame=5)
    media = aggregate(scored, AggregationRule.parse("max"), min_track_fraction=0.0)
    assert media.decisive_track == 7 and media.p_fake == pytest.approx(0.99)


def test_when_no_track_is_seen_often_enough_all_tracks_count() -> None:
    # Given three short tracks in 30 frames and a fraction none of them reaches, then the highest still decides
    scored = items(1, [0.3], 0) + items(2, [0.8], 10) + items(3, [0.4], 20)
    media = aggregate(scored, AggregationRule.parse("mean"), min_track_fraction=0.5)
    assert media.decisive_track == 2 and media.p_fake == pytest.approx(0.8)


def test_full_frame_scores_are_one_track() -> None:
    # Given full-frame scores (no track ids) for six frames
    scored = items(None, [0.1, 0.2, 0.9, 0.8, 0.1, 0.2], first_frame=3)

    # When aggregated with the mean, then there is exactly one track, spanning all frames, scored by the rule
    media = aggregate(scored, AggregationRule.parse("mean"))
    assert len(media.tracks) == 1
    (track,) = media.tracks
    assert (track.n_frames, track.first_frame, track.last_frame) == (6, 3, 8)
    assert media.p_fake == pytest.approx(sum([0.1, 0.2, 0.9, 0.8, 0.1, 0.2]) / 6)
    assert media.decisive_track == track.track_id


def test_the_track_rule_is_applied_per_track() -> None:
    # Given one track with a short fake segment, topk:0.25 catches it where mean does not
    scored = items(4, [0.1] * 6 + [0.9] * 2)
    assert aggregate(scored, AggregationRule.parse("mean")).p_fake == pytest.approx(0.3)
    assert aggregate(scored, AggregationRule.parse("topk:0.25")).p_fake == pytest.approx(0.9)


def test_empty_input_raises() -> None:
    with pytest.raises(ValueError, match="nothing to aggregate"):
        aggregate([], AggregationRule.parse("mean"))
