"""``trainer export-reviews`` without a database: which media is local and intact, and how splits are dealt."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import pytest

from deepsift.trainer.reviewed import ReviewedMedia, local_copy, split_of


def reviewed(uri: str, sha: str | None) -> ReviewedMedia:
    return ReviewedMedia(1, "job", 1, uri, sha, "image", "fake", None)


def test_splits_follow_the_fractions_and_the_seed() -> None:
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(20000)]
    # When 20 000 contents are dealt 70/15/15
    dealt = Counter(split_of(h, 0, 0.15, 0.15) for h in hashes)
    # Then the shares are close to the fractions, the same content always lands in the same split,
    assert {s: round(n / len(hashes), 2) for s, n in dealt.items()} == pytest.approx(
        {"train": 0.70, "val": 0.15, "test": 0.15}, abs=0.01
    )
    # (pinned: a change of the keyed hash would move reviewed media between splits of successive exports)
    assert [split_of(h, 0, 0.15, 0.15) for h in hashes[:12]] == [
        "train", "train", "train", "train", "val", "test", "train", "train", "test", "test", "train", "train"
    ]  # fmt: skip
    # and another seed deals another hand
    moved = sum(split_of(h, 0, 0.15, 0.15) != split_of(h, 1, 0.15, 0.15) for h in hashes)
    assert 0.35 < moved / len(hashes) < 0.55  # two independent draws differ with probability 1 − Σ p² = 0.465


def test_local_copies_are_found_by_path_or_file_uri_and_checked_against_their_hash(tmp_path: Path) -> None:
    media = tmp_path / "a clip #1.mp4"
    media.write_bytes(b"judged bytes")
    sha = hashlib.sha256(b"judged bytes").hexdigest()
    assert local_copy(reviewed(media.as_uri(), sha)) == (media, None)  # percent-encoded URI
    assert local_copy(reviewed(str(media), sha)) == (media, None)  # a plain path, as some sources store it

    media.write_bytes(b"edited")
    reasons = {
        "changed": reviewed(media.as_uri(), sha),
        "missing": reviewed((tmp_path / "gone.jpg").as_uri(), sha),
        "remote_media": reviewed("https://media.example.com/x.jpg", sha),
        "not_local": reviewed("s3://bucket/x.jpg", sha),
    }
    assert {reason: local_copy(item)[1][0] for reason, item in reasons.items()} == {r: r for r in reasons}
