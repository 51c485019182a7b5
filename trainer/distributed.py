"""This process's place in a ``torchrun`` job (or a lone process): its rank and device, the loader that gives it
its share of the training set, and the DDP wrapping of the objective."""

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
