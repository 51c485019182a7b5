"""Preprocessing on a non-square image: each resize rule, normalisation, colour order and the batch helper.

The test image is 120 high × 200 wide: red in columns 0–59, green in 60–139, blue in 140–199 (pure colours, so a
pixel's class is its argmax channel). Expected layouts come from the geometry, not from the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepsift.engines.preprocess import InputContract, fit_to_square, preprocess_batch, preprocess_image

H, W, SIZE = 120, 200, 64
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
RED, GREEN, BLUE = 0, 1, 2


@pytest.fixture
def bands() -> np.ndarray:
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:, :60, RED] = 255
    rgb[:, 60:140, GREEN] = 255
    rgb[:, 140:, BLUE] = 255
    return rgb


def contract(**fields: object) -> InputContract:
    return InputContract(size=SIZE, **fields)


def unit_range(chw: torch.Tensor, c: InputContract) -> np.ndarray:
    """Undo the normalisation: back to [0, 1] pixels, HWC."""
    mean, std = np.array(c.mean), np.array(c.std)
    return chw.permute(1, 2, 0).numpy() * std + mean


def colour_counts(row: np.ndarray) -> list[int]:
    """How many pixels of a HWC row are mostly red, green and blue."""
    classes = row.argmax(axis=-1)
    return [int((classes == k).sum()) for k in (RED, GREEN, BLUE)]


@pytest.mark.parametrize("mode", ["squash", "shorter_center_crop", "longest_pad"])
def test_every_mode_makes_a_float32_square_of_the_contract_size(bands: np.ndarray, mode: str) -> None:
    out = preprocess_image(bands, contract(resize_mode=mode))
    assert out.shape == (3, SIZE, SIZE) and out.dtype == torch.float32


def test_squash_fills_the_square_and_stretches_the_bands(bands: np.ndarray) -> None:
    # Given the contract squashes, when the image is preprocessed
    c = contract(resize_mode="squash")
    pixels = unit_range(preprocess_image(bands, c), c)

    # Then every row holds the three bands in proportion to their widths (60/80/60 of 200) and no row is black
    expected = [SIZE * 60 / 200, SIZE * 80 / 200, SIZE * 60 / 200]
    for y in (0, SIZE // 2, SIZE - 1):
        np.testing.assert_allclose(colour_counts(pixels[y]), expected, atol=1.5)
    assert pixels.max(axis=(1, 2)).min() > 0.9


def test_shorter_center_crop_keeps_the_centre_and_drops_the_sides(bands: np.ndarray) -> None:
    # Given a crop contract, when the image is preprocessed
    c = contract(resize_mode="shorter_center_crop")
    pixels = unit_range(preprocess_image(bands, c), c)

    # Then the output shows the central 120×120 of the original (columns 40–159): 20 red, 80 green, 20 blue
    expected = [SIZE * 20 / 120, SIZE * 80 / 120, SIZE * 20 / 120]
    np.testing.assert_allclose(colour_counts(pixels[SIZE // 2]), expected, atol=1.5)
    assert pixels[SIZE // 2, SIZE // 2].argmax() == GREEN
    # and nothing is padded: no row or column is black
    assert pixels.max(axis=(1, 2)).min() > 0.5 and pixels.max(axis=(0, 2)).min() > 0.5


def test_shorter_center_crop_of_a_tall_image_keeps_the_vertical_centre() -> None:
    # Given a 200 high × 120 wide image: white top 40 rows, grey middle, white bottom 40 rows
    tall = np.full((200, 120, 3), 128, np.uint8)
    tall[:40] = tall[-40:] = 255
    c = contract(resize_mode="shorter_center_crop", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))

    # When it is preprocessed, then only the grey middle (rows 40–159 of 200) remains; the resize filter may bleed
    # the cut-off white into the outermost row, no further
    out = preprocess_image(tall, c).numpy()
    np.testing.assert_allclose(out[:, 1:-1], 128 / 255, atol=1e-5)


@pytest.mark.parametrize("mean, std", [((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), (IMAGENET_MEAN, IMAGENET_STD)])
def test_longest_pad_keeps_the_aspect_ratio_and_pads_symmetric_black(bands: np.ndarray, mean, std) -> None:
    # Given a padding contract, when the wide image is preprocessed
    c = contract(resize_mode="longest_pad", mean=mean, std=std)
    out = preprocess_image(bands, c).numpy()

    # Then the padding holds black after normalisation, (0 − mean) / std, exactly
    black = (-np.array(mean) / np.array(std)).astype(np.float32)
    is_pad_row = np.all(np.isclose(out, black[:, None, None], atol=1e-6), axis=(0, 2))
    content_rows = np.flatnonzero(~is_pad_row)
    top, bottom = content_rows[0], SIZE - 1 - content_rows[-1]
    # and the content is as high as the aspect ratio demands (64 · 120/200 = 38.4), in one block
    assert abs(len(content_rows) - SIZE * H / W) <= 1
    assert np.all(np.diff(content_rows) == 1)
    # centred: the black bands above and below differ by at most one row
    assert abs(top - bottom) <= 1 and top > 10
    # and the width is filled edge to edge with the three bands in proportion
    pixels = unit_range(torch.from_numpy(out), c)
    np.testing.assert_allclose(colour_counts(pixels[SIZE // 2]), [19.2, 25.6, 19.2], atol=1.5)


def test_longest_pad_of_a_tall_image_pads_left_and_right(bands: np.ndarray) -> None:
    # Given the image turned upright (200 high × 120 wide)
    tall = np.ascontiguousarray(bands.transpose(1, 0, 2))
    c = contract(resize_mode="longest_pad", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))

    # When it is padded, then the black goes into columns, symmetrically
    out = preprocess_image(tall, c).numpy()
    content_cols = np.flatnonzero(out.max(axis=(0, 1)) > 1e-6)
    left, right = content_cols[0], SIZE - 1 - content_cols[-1]
    assert abs(len(content_cols) - SIZE * H / W) <= 1 and abs(left - right) <= 1
    assert out.max(axis=(0, 2)).min() > 0.5  # every row has content


@pytest.mark.parametrize("mode", ["squash", "shorter_center_crop", "longest_pad"])
@pytest.mark.parametrize("colour", [(0, 0, 0), (255, 255, 255), (30, 144, 250)])
def test_a_constant_image_maps_to_its_normalised_colour(mode: str, colour: tuple[int, int, int]) -> None:
    # Given a constant-colour image and ImageNet normalisation
    image = np.empty((H, W, 3), np.uint8)
    image[:] = colour
    c = contract(resize_mode=mode, mean=IMAGENET_MEAN, std=IMAGENET_STD)

    # When it is preprocessed, then every non-padding pixel is (c/255 − mean) / std, computed here independently
    out = preprocess_image(image, c).numpy()
    expected = (np.array(colour) / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    if mode == "longest_pad":
        out = out[:, SIZE // 2 - 15 : SIZE // 2 + 15]  # the central rows are content, the rest is padding
    np.testing.assert_allclose(out, np.broadcast_to(expected[:, None, None], out.shape), atol=1e-5)


def test_bgr_flips_the_channels_before_normalising() -> None:
    # Given a constant colour with three different channel values and per-channel normalisation
    image = np.empty((H, W, 3), np.uint8)
    image[:] = (10, 120, 230)
    c = contract(color_order="BGR", mean=IMAGENET_MEAN, std=IMAGENET_STD)

    # When it is preprocessed for a BGR engine, then channel 0 holds blue, normalised by the contract's first mean/std
    out = preprocess_image(image, c).numpy()
    expected = (np.array([230, 120, 10]) / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(out[:, 5, 5], expected, atol=1e-5)


def test_bgr_output_is_the_rgb_output_reversed(bands: np.ndarray) -> None:
    rgb = preprocess_image(bands, contract(resize_mode="longest_pad"))
    bgr = preprocess_image(bands, contract(resize_mode="longest_pad", color_order="BGR"))
    torch.testing.assert_close(bgr, rgb.flip(0))
    assert not torch.equal(bgr, rgb)


@pytest.mark.parametrize("shape", [(H, W), (H, W, 4), (H, W, 1), (3, H, W), (1, H, W, 3)])
def test_an_image_that_is_not_hxwx3_is_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="H×W×3"):
        preprocess_image(np.zeros(shape, np.uint8), contract())


def test_a_float_input_is_not_modified() -> None:
    # Given a float32 image (torch shares its memory), when it is preprocessed, then the caller's array is intact
    image = np.full((H, W, 3), 200.0, np.float32)
    preprocess_image(image, contract())
    assert np.all(image == 200.0)


def test_a_torch_tensor_gives_the_same_result_as_numpy(bands: np.ndarray) -> None:
    c = contract(resize_mode="shorter_center_crop")
    torch.testing.assert_close(preprocess_image(torch.from_numpy(bands), c), preprocess_image(bands, c))


def test_fit_to_square_keeps_values_within_the_input_range_per_mode(bands: np.ndarray) -> None:
    # Given a [0, 1] CHW image, when it is fitted by each rule, then the output is the square and no value leaves [0, 1]
    chw = torch.from_numpy(bands).permute(2, 0, 1).float() / 255
    for mode in ("squash", "shorter_center_crop", "longest_pad"):
        out = fit_to_square(chw, 33, mode)  # an odd size: padding cannot split evenly
        assert out.shape == (3, 33, 33)
        assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6


def test_the_batch_is_contiguous_float32_nchw_in_input_order(bands: np.ndarray) -> None:
    # Given images of different sizes, one of them a non-contiguous view
    c = contract(resize_mode="longest_pad")
    images = [bands, bands[::2, ::-1], np.full((50, 30, 3), 77, np.uint8)]

    # When they are batched
    batch = preprocess_batch(images, c)

    # Then the batch is one contiguous float32 N×3×S×S array whose items equal the single-image results, in order
    assert batch.shape == (3, 3, SIZE, SIZE) and batch.dtype == np.float32
    assert batch.flags["C_CONTIGUOUS"]
    for item, image in zip(batch, images, strict=True):
        np.testing.assert_array_equal(item, preprocess_image(image, c).numpy())


def test_an_empty_batch_has_the_contract_shape() -> None:
    batch = preprocess_batch([], contract())
    assert batch.shape == (0, 3, SIZE, SIZE) and batch.dtype == np.float32


def test_the_contract_rejects_unknown_keys_and_bad_values() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        InputContract(size=SIZE, resize="squash")
    with pytest.raises(ValidationError):
        InputContract(size=SIZE, resize_mode="stretch")
    with pytest.raises(ValidationError):
        InputContract(size=0)


# --- tensors: the GPU path's code, run on CPU --------------------------------------------------------------


@pytest.mark.parametrize("mode", ["squash", "shorter_center_crop", "longest_pad"])
def test_cpu_tensors_give_the_numpy_batch_bit_for_bit(bands: np.ndarray, mode: str) -> None:
    # Given the same images as numpy arrays and as CPU tensors, when each list is batched
    c = contract(resize_mode=mode, mean=IMAGENET_MEAN, std=IMAGENET_STD, color_order="BGR")
    images = [bands, np.ascontiguousarray(bands[::2, ::-1])]
    from_numpy = preprocess_batch(images, c)
    from_tensors = preprocess_batch([torch.from_numpy(image) for image in images], c)
    # Then both are the same numpy array: host input gives host output, whatever its type
    assert isinstance(from_tensors, np.ndarray)
    np.testing.assert_array_equal(from_tensors, from_numpy)


def test_device_tensors_give_a_batch_on_their_device(bands: np.ndarray) -> None:
    # Given frames on a device that is not the CPU ("meta": shapes without data, standing in for CUDA here)
    frames = [torch.from_numpy(bands).to("meta"), torch.zeros(50, 30, 3, dtype=torch.uint8, device="meta")]
    # When they are batched, then the batch stays on that device as one float32 N×3×S×S tensor
    batch = preprocess_batch(frames, contract(resize_mode="longest_pad"))
    assert isinstance(batch, torch.Tensor) and batch.device.type == "meta"
    assert batch.shape == (2, 3, SIZE, SIZE) and batch.dtype == torch.float32 and batch.is_contiguous()


def test_square_crop_of_a_tensor_equals_the_numpy_crop_and_stays_on_its_device(bands: np.ndarray) -> None:
    from deepsift.engines.faces import FaceBox, square_crop

    # Given a box reaching past the top-left corner, so the crop is partly black padding
    box = FaceBox(-10.0, -5.0, 40.0, 60.0, 0.99)
    crop = square_crop(torch.from_numpy(bands), box, 0.3)
    # Then the tensor crop holds the numpy crop's pixels, and a device frame gives a crop on the device
    assert isinstance(crop, torch.Tensor)
    np.testing.assert_array_equal(crop.numpy(), square_crop(bands, box, 0.3))
    assert square_crop(torch.from_numpy(bands).to("meta"), box, 0.3).device.type == "meta"


def test_mtcnn_finds_the_same_faces_in_tensors_as_in_arrays() -> None:
    from skimage import data

    from deepsift.engines.faces import MtcnnFaceDetector

    # Given the astronaut portrait as a numpy array and as a tensor (the GPU decoder's frame type)
    detector = MtcnnFaceDetector()
    frame = data.astronaut()
    # When both are searched for faces, then the same single face comes back
    from_array, from_tensor = detector.detect([frame, frame]), detector.detect([torch.from_numpy(frame)] * 2)
    assert len(from_array[0]) == 1 and from_tensor == from_array


@pytest.mark.parametrize("shape", [(300, 451), (301, 455), (451, 300), (224, 227)])
def test_torchvision_rounding_gives_torchvision_resize_and_centre_crop_pixels(shape: tuple[int, int]) -> None:
    # Given photos whose scaled long side is fractional (300×451 → 224×336.75) or whose crop offset is a half (224×227)
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as tf

    chw = torch.rand(3, *shape, generator=torch.Generator().manual_seed(0))
    reference = tf.center_crop(tf.resize(chw, 224, InterpolationMode.BICUBIC, antialias=True), [224, 224])

    # Then the torchvision rule is torchvision's, bit for bit, and the nearest rule (engines before it) is not
    torch.testing.assert_close(fit_to_square(chw, 224, "shorter_center_crop", "bicubic", "torchvision"), reference,
                               rtol=0, atol=0)  # fmt: skip
    assert not torch.equal(fit_to_square(chw, 224, "shorter_center_crop", "bicubic"), reference)


def test_a_contract_without_rounding_keeps_the_rounding_engines_were_built_with() -> None:
    assert InputContract(size=8).rounding == "nearest"
    with pytest.raises(ValueError, match="rounding"):
        InputContract(size=8, rounding="ceil")
