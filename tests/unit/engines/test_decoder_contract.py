"""Contract over the decoder registry: every registered decoder, a new one included, is built by its factory and
held to the same rules.

On a machine without a GPU the ``dali`` decoder routes stills to PyAV before any worker starts, and ``auto``
resolves to ``pyav``, so each entry runs here on real media written by PyAV and Pillow.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepsift.engines.budgets import MediaBudget
from deepsift.engines.decoders import DECODERS, Decoder, DecoderOptions
from deepsift.engines.errors import MediaError

DECODER_NAMES = DECODERS.names()


@pytest.fixture(params=DECODER_NAMES)
def decoder(request: pytest.FixtureRequest) -> Iterator[Decoder]:
    """Each registry entry, built by its factory from default options as the daemon builds it, closed afterwards."""
    built = DECODERS.get(request.param)(DecoderOptions())
    yield built
    built.close()


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("media") / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (120, 200, 3), dtype=np.uint8)).save(path)
    return path


def test_the_registry_holds_the_cpu_and_gpu_decoders() -> None:
    assert {"pyav", "dali", "auto"} <= set(DECODER_NAMES)


def test_every_decoder_names_itself_and_closes_twice(decoder: Decoder) -> None:
    assert decoder.name in DECODER_NAMES
    decoder.close()  # the fixture closes it again: closing is idempotent


def test_every_decoder_gives_upright_rgb_frames_and_the_true_size(decoder: Decoder, photo: Path) -> None:
    decoded = decoder(photo, 4, budget=MediaBudget())
    assert decoded.facts.media_type == "image" and (decoded.facts.width, decoded.facts.height) == (200, 120)
    assert len(decoded.frames) == 1
    frame = np.asarray(decoded.frames[0].rgb)
    assert frame.shape == (120, 200, 3) and frame.dtype == np.uint8
    assert np.array_equal(frame, np.asarray(Image.open(photo).convert("RGB")))


def test_every_decoder_refuses_media_over_the_budget_with_its_code(decoder: Decoder, photo: Path) -> None:
    with pytest.raises(MediaError) as refused:
        decoder(photo, 4, budget=MediaBudget(max_image_pixels=1000))
    assert refused.value.code == "too_many_pixels"


def test_every_decoder_answers_bytes_that_are_not_media_with_a_media_error(decoder: Decoder, tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(MediaError) as refused:
        decoder(junk, 4, budget=MediaBudget())
    assert refused.value.code in {"not_media", "corrupt_media"}
