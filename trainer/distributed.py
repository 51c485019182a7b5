"""This process's place in a ``torchrun`` job (or a lone process): its rank and device, the loader that gives it
its share of the training set, the DDP wrapping of the objective, and the collectives a loss over the global batch
needs (``global_batch``, an all-gather with gradients; ``broadcast_from_main``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from deepsift.trainer.data import ManifestDataset


@dataclass(frozen=True)
class Rank:
    """This process's place in a ``torchrun`` job (or a lone process)."""

    rank: int = 0
    world: int = 1
    local: int = 0

    @classmethod
    def from_env(cls) -> Rank:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def agree(self, flag: bool) -> bool:
        """True on every rank when any rank says so (stop on one rank's time budget stops all)."""
        if self.world == 1:
            return flag
        value = torch.tensor(float(flag))
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def rank_device(requested: str | None, rank: Rank) -> torch.device:
    """The requested device, else this rank's GPU when there is one, else the CPU."""
    if requested:
        return torch.device(requested)
    return torch.device(f"cuda:{rank.local}") if torch.cuda.is_available() else torch.device("cpu")


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def rank_loader(
    dataset: ManifestDataset, batch_size: int, seed: int, workers: int, rank: Rank
) -> torch.utils.data.DataLoader:
    """Shuffled batches of this rank's share (``batch_size`` is the global batch, split over the ranks)."""
    generator = torch.Generator().manual_seed(seed)
    sampler = (
        torch.utils.data.DistributedSampler(dataset, rank.world, rank.rank, shuffle=True, seed=seed)
        if rank.world > 1
        else torch.utils.data.RandomSampler(dataset, generator=generator)
    )
    per_rank = max(1, batch_size // rank.world)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=per_rank,
        sampler=sampler,
        num_workers=workers,
        drop_last=len(dataset) // rank.world >= per_rank,  # BatchNorm heads cannot train on a batch of one
        worker_init_fn=lambda worker: np.random.seed((seed + 1000 * rank.rank + worker) % 2**32),
        generator=generator,
        persistent_workers=workers > 0,
    )


def epoch_batches(loader: torch.utils.data.DataLoader, start_epoch: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(epoch, batch)`` without end, from ``start_epoch`` (a resumed run reshuffles as the epoch it stopped in)."""
    epoch = start_epoch
    while True:
        if isinstance(loader.sampler, torch.utils.data.DistributedSampler):
            loader.sampler.set_epoch(epoch)
        for batch in loader:
            yield epoch, batch
        epoch += 1


def data_parallel(objective: nn.Module, rank: Rank, device: torch.device) -> nn.Module:
    """The objective as the loop calls it: DDP-wrapped when ``torchrun`` started several ranks."""
    if rank.world == 1:
        return objective
    return nn.parallel.DistributedDataParallel(
        objective, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
    )


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _row_counts(tensor: torch.Tensor) -> list[int]:
    """How many rows every rank holds (ranks may differ: the last batch of an uneven split)."""
    count = torch.tensor([len(tensor)], device=tensor.device)
    counts = [torch.empty_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    return [int(c.item()) for c in counts]


def _gather_rows(tensor: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Every rank's rows concatenated in rank order (padded to the longest for the collective), no autograd."""
    padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
    padded[: len(tensor)] = tensor
    pieces = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(pieces, padded.contiguous())
    return torch.cat([piece[:n] for piece, n in zip(pieces, counts, strict=True)])


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward reaches every rank: the gradient of the gathered tensor is summed over the ranks
    (each rank's loss used all of it) and each rank keeps the rows it contributed (open_clip's ``gather_with_grad``;
    here with an all-reduce, which gloo and NCCL both have, so ranks may hold different row counts)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        counts = _row_counts(tensor)
        ctx.start = sum(counts[: dist.get_rank()])
        ctx.stop = ctx.start + len(tensor)
        return _gather_rows(tensor, counts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start : ctx.stop]


def global_batch(tensor: torch.Tensor) -> torch.Tensor:
    """The rows of every rank in rank order, when ``torch.distributed`` runs several ranks (else ``tensor``).
    Gradients flow back to the rank that contributed each row, so a loss over the global batch trains every rank's
    encoder; with DDP's gradient average, the step equals one process's on the whole batch."""
    if not _distributed():
        return tensor
    if tensor.requires_grad:
        return _GatherWithGrad.apply(tensor)
    return _gather_rows(tensor, _row_counts(tensor))


def broadcast_from_main(tensor: torch.Tensor) -> torch.Tensor:
    """Rank 0's ``tensor`` on every rank (a random draw all ranks must share), or ``tensor`` in a lone process."""
    if not _distributed():
        return tensor
    tensor = tensor.clone()
    dist.broadcast(tensor, src=0)
    return tensor
