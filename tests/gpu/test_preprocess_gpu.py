"""GPU preprocessing and face detection match the CPU path that the engines were built against.

Tolerances: preprocessing (crop, antialiased bilinear resize, normalise) max |Δ| ≤ 1e-4 on normalised values —
a hundredth of one uint8 level after ImageNet std (1/255/0.225 ≈ 0.017); square crops are copies, so exact.
MTCNN boxes: IoU ≥ 0.9 with the CPU box of the same face, same number of faces, confidence within 0.01.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepsift.engines.faces import FaceBox, MtcnnFaceDetector, iou, square_crop
from deepsift.engines.preprocess import InputContract, preprocess_batch

MAX_PREPROCESS_DIFF = 1e-4
MIN_BOX_IOU = 0.9


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    from skimage import data

    rng = np.random.default_rng(0)
    return [data.astronaut(), data.chelsea(), rng.integers(0, 256, (181, 333, 3), dtype=np.uint8)]


@pytest.mark.parametrize("mode", ["squash", "shorter_center_crop", "longest_pad"])
@pytest.mark.parametrize("order", ["RGB", "BGR"])
@pytest.mark.parametrize("size", [224, 384])
def test_gpu_preprocessing_matches_cpu(frames, mode: str, order: str, size: int) -> None:
    contract = InputContract(
        size=size, resize_mode=mode, color_order=order, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
    )
    on_cpu = preprocess_batch(frames, contract)
    on_gpu = preprocess_batch([torch.from_numpy(f).cuda() for f in frames], contract)
    assert isinstance(on_gpu, torch.Tensor) and on_gpu.is_cuda and on_gpu.is_contiguous()
    assert float(np.abs(on_gpu.cpu().numpy() - on_cpu).max()) <= MAX_PREPROCESS_DIFF


def test_square_crops_on_the_gpu_are_the_cpu_crops(frames) -> None:
    box = FaceBox(-20.0, 30.0, 150.0, 260.0, 0.99)  # reaches past the left edge: part padding
    for frame in frames:
        on_gpu = square_crop(torch.from_numpy(frame).cuda(), box, 0.3)
        assert on_gpu.is_cuda
        np.testing.assert_array_equal(on_gpu.cpu().numpy(), square_crop(frame, box, 0.3))


def test_mtcnn_on_the_gpu_finds_the_cpu_faces(frames) -> None:
    from deepsift.trainer.demo import scene_factory

    factory, rng = scene_factory(), np.random.default_rng(1)
    scenes = [factory.render(factory.forged_photo(None), factory.random_view(rng), background=i)[0] for i in range(6)]
    images = [frames[0], *scenes]
    on_cpu = MtcnnFaceDetector().detect(images)
    on_gpu = MtcnnFaceDetector(device="cuda").detect([torch.from_numpy(image).cuda() for image in images])
    assert sum(map(len, on_cpu)) >= len(images)  # every image has its face
    for cpu_boxes, gpu_boxes in zip(on_cpu, on_gpu, strict=True):
        assert len(gpu_boxes) == len(cpu_boxes)
        for cpu_box, gpu_box in zip(cpu_boxes, gpu_boxes, strict=True):
            assert iou(cpu_box, gpu_box) >= MIN_BOX_IOU
            assert abs(cpu_box.confidence - gpu_box.confidence) <= 0.01
