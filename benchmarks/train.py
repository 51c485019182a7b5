"""Training throughput per recipe: images/s of full optimizer steps (forward, loss, backward, AdamW) on CPU for the
tiny recipes, in fp32 and under bf16 autocast (CPU autocast has no fp16; the recipes' fp16 means CUDA).

Batches are fixed random tensors of the recipe's input size with the labels, masks and descriptions its loss
reads, so the figure is the model's and the loss's, not the disk's. The prototype few-shot recipe is not trained
by gradients; its row is support-embedding throughput (forward only, with flip TTA off), which is what fitting it costs.

    .venv/bin/python benchmarks/train.py                          # every tiny recipe, batch 32, 2 threads
    .venv/bin/python benchmarks/train.py --recipes tiny-sd2 --batch 64 --steps 20 --threads 4
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deepsift.engines.models import build_detector  # noqa: E402
from deepsift.engines.recipes import Recipe, load_recipe  # noqa: E402
from deepsift.trainer.evaluate import autocast  # noqa: E402
from deepsift.trainer.objectives import OBJECTIVES  # noqa: E402

TINY = ("demo-tiny", "tiny-multitask", "tiny-fusion", "tiny-sd2", "tiny-fewshot")


def batch_for(recipe: Recipe, n: int) -> dict[str, object]:
    """A batch with everything any objective reads, at the recipe's input size."""
    g = torch.Generator().manual_seed(0)
    size, classes = recipe.input.size, len(recipe.task.class_names)
    return {
        "pixels": torch.rand(n, 3, size, size, generator=g) * 2 - 1,
        "fake": torch.randint(0, 2, (n,), generator=g).float(),
        "target": torch.randint(0, classes, (n,), generator=g),
        "mask": (torch.rand(n, size, size, generator=g) > 0.8).float(),
        "has_mask": torch.ones(n, dtype=torch.bool),
        "face_description": [f"a person with a face description number {i}" for i in range(n)],
        "environment_description": [f"a room with an environment description number {i}" for i in range(n)],
    }


def images_per_second(recipe: Recipe, batch: int, steps: int, amp: str) -> float:
    torch.manual_seed(0)
    detector = build_detector(recipe)
    objective = OBJECTIVES.get(recipe.train.loss)(detector, recipe)
    data, device = batch_for(recipe, batch), torch.device("cpu")
    if not objective.trainable:
        detector.eval()

        def step() -> None:
            with torch.no_grad(), autocast(amp, device):
                detector.embed(data["pixels"])
    else:
        optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=1e-4)
        objective.train()

        def step() -> None:
            with autocast(amp, device):
                loss, _ = objective(data, 0.5)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    for _ in range(2):  # warm-up: allocator, autocast caches, lazy imports
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=list(TINY))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps per figure")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, {args.steps} timed steps")
    print(f"{'recipe':18} {'detector':20} {'px':>4} {'fp32 img/s':>11} {'bf16 img/s':>11} {'bf16/fp32':>9}")
    for name in args.recipes:
        recipe = load_recipe(name)
        fp32 = images_per_second(recipe, args.batch, args.steps, "none")
        bf16 = images_per_second(recipe, args.batch, args.steps, "bf16")
        kind = recipe.detector + ("" if OBJECTIVES.get(recipe.train.loss).trainable else " (fwd)")
        print(f"{name:18} {kind:20} {recipe.input.size:4} {fp32:11.1f} {bf16:11.1f} {bf16 / fp32:9.2f}")


if __name__ == "__main__":
    main()
