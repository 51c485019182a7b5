"""Frame/face scores → track scores → one media score, by a selectable rule, on hand-checkable numbers."""

from __future__ import annotations

from itertools import accumulate

import pytest

from deepsift.engines.aggregate import (
    COVERAGE_WEIGHTED,
    MAX_OF_COVERED,
    RULES,
    SMALL_FACE_SIDE,
    AggregationRule,
    ScoredItem,
    aggregate,
)

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
    assert (media.decisive_track, media.decision) == (2, MAX_OF_COVERED)
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


def test_without_a_minimum_fraction_a_track_seen_twice_decides() -> None:
    # The control for the test above: with min_track_fraction 0, a track seen in two frames is covered and decides
    scored = items(1, [0.2] * 20) + items(7, [0.99, 0.99], first_frame=5)
    media = aggregate(scored, AggregationRule.parse("max"), min_track_fraction=0.0)
    assert (media.decisive_track, media.decision) == (7, MAX_OF_COVERED) and media.p_fake == pytest.approx(0.99)


def test_a_track_seen_in_one_frame_never_decides_a_video_even_when_the_fraction_asks_for_one() -> None:
    # Given eight frames (10 % of them is under one frame), a face in all of them and a stray in one, or none at all
    scored = items(1, [0.2] * 8) + items(7, [0.99], first_frame=3)
    for fraction in (0.1, 0.0):
        # Then the stray is not covered: the face decides
        media = aggregate(scored, AggregationRule.parse("max"), min_track_fraction=fraction)
        assert (media.decisive_track, media.decision) == (1, MAX_OF_COVERED)


def test_in_an_image_every_face_is_covered_and_the_most_suspicious_decides() -> None:
    # Given one frame with three faces, Then each is covered (one frame of one) and the fake one decides
    scored = [ScoredItem(0, p, track_id=t) for t, p in enumerate([0.1, 0.9, 0.3])]
    media = aggregate(scored, AggregationRule.parse("mean"))
    assert (media.decisive_track, media.decision, media.p_fake) == (1, MAX_OF_COVERED, pytest.approx(0.9))


def test_when_no_track_is_seen_often_enough_the_coverage_weighted_mean_decides() -> None:
    # Given three one-frame tracks in three frames and a fraction none of them reaches
    scored = items(1, [0.3], 0) + items(2, [0.8], 10) + items(3, [0.4], 20)
    media = aggregate(scored, AggregationRule.parse("mean"), min_track_fraction=0.5)
    # Then none is taken alone: the mean weighted by evidence (equal here), named by the most suspicious of equals
    assert media.decision == COVERAGE_WEIGHTED and media.p_fake == pytest.approx(0.5)
    assert media.decisive_track == 2


def test_a_fragmented_real_face_outweighs_one_confident_stray_detection() -> None:
    # Given one real face in 32 sampled frames that tracking split into 21 short pieces (one or two frames each),
    # and one stray detection on the background, confidence 0.96, scored fake (the clip of issue 16)
    sizes = [1, 2] * 10 + [2]
    pieces = [range(start, start + n) for start, n in zip(accumulate([0, *sizes]), sizes, strict=False)]
    assert (len(pieces), pieces[-1][-1]) == (21, 31)
    real = [ScoredItem(f, 0.05, track_id=t, confidence=0.999) for t, fs in enumerate(pieces) for f in fs]
    scored = [*real, ScoredItem(9, 0.999, track_id=99, confidence=0.96)]
    # When aggregated (no track reaches 10 % = 4 frames)
    media = aggregate(scored, AggregationRule.parse("mean"), min_track_fraction=0.1)
    # Then the video is real: every region weighs about the same, 1 in 23 of them fake; a real piece decides
    assert media.decision == COVERAGE_WEIGHTED and media.p_fake < 0.1 and media.decisive_track != 99
    assert max(t.p_fake for t in media.tracks) == pytest.approx(0.999)  # what "all tracks, the max" said


def test_a_fragmented_fake_face_still_makes_the_video_fake() -> None:
    # Given a fake face split into one-frame pieces in ten frames, Then the fallback still says fake
    scored = [ScoredItem(k, 0.9, track_id=k) for k in range(10)]
    media = aggregate(scored, AggregationRule.parse("mean"))
    assert media.decision == COVERAGE_WEIGHTED and media.p_fake == pytest.approx(0.9)


def test_confidence_and_small_faces_weigh_in_the_fallback() -> None:
    # Given a region's weight: detector confidence times a discount for faces under SMALL_FACE_SIDE of the frame
    big = ScoredItem(0, 0.0, confidence=0.8, area_fraction=0.04)  # side 0.2 of the frame
    small = ScoredItem(0, 0.0, confidence=1.0, area_fraction=(SMALL_FACE_SIDE / 4) ** 2)
    assert (big.weight, small.weight, ScoredItem(0, 0.0).weight) == pytest.approx((0.8, 0.25, 1.0))
    # When two one-frame tracks in two frames are all there is, Then P(fake) is their weighted mean
    scored = [ScoredItem(0, 0.1, 1, 0.8, 0.04), ScoredItem(1, 0.9, 2, 1.0, (SMALL_FACE_SIDE / 4) ** 2)]
    media = aggregate(scored, AggregationRule.parse("mean"))
    assert media.p_fake == pytest.approx((0.8 * 0.1 + 0.25 * 0.9) / 1.05) and media.decisive_track == 1
    assert [t.weight for t in media.tracks] == pytest.approx([0.8, 0.25])
    assert [t.coverage for t in media.tracks] == pytest.approx([0.5, 0.5])


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
