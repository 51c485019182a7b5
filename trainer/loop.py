"""The training loop for every gradient-trained recipe: AdamW/Adam, cosine schedule with warmup, AMP (fp16 with a
grad scaler on CUDA, bf16 anywhere), gradient accumulation and clipping, EMA, best checkpoint by the recipe's
metric, resume, fixed seeds, progress bars, and DDP when started by ``torchrun``.

A run folder holds ``best.pt`` (the detector's state_dict — what ``trainer build-engine --checkpoint`` loads),
``last.pt`` (everything needed to resume), ``history.json`` (training curves), ``recipe.json`` and
``summary.json`` (best figure, step, and the validation-chosen threshold).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from engines.recipes import Recipe, TrainSpec
from trainer.augment import augmenter_for
from trainer.data import ManifestDataset
from trainer.evaluate import autocast, evaluation_report, predict_dataset, selection_score
from trainer.metrics import youden_threshold
from trainer.objectives import OBJECTIVES, Objective


@dataclass(frozen=True)
class FitOptions:
    """How long and where to train; the recipe says how."""

    out: Path
    epochs: int | None = None  # default: the recipe's
    max_steps: int | None = None  # optimizer steps; caps epochs
    eval_every: int | None = None  # optimizer steps; default: once per epoch
    time_budget_s: float | None = None
    seed: int = 0
    workers: int = 0
    resume: bool = False
    progress: bool = True
    device: str | None = None  # default: cuda (this rank's) when available, else cpu
    data: Path | None = None  # the dataset manifest, recorded in summary.json for `trainer rebuild-engine`


@dataclass
class FitResult:
    best_metric: float
    best_step: int
    threshold: float
    history: list[dict[str, float]] = field(default_factory=list)
    run_dir: Path = Path()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(spec: TrainSpec, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)


def make_scheduler(
    optimizer: torch.optim.Optimizer, spec: TrainSpec, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup_fraction`` of the steps, then cosine to zero (or constant)."""
    warmup = int(spec.warmup_fraction * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if spec.schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass(frozen=True)
class _Rank:
    """This process's place in a ``torchrun`` job (or a lone process)."""

    rank: int = 0
    world: int = 1
    local: int = 0

    @classmethod
    def from_env(cls) -> _Rank:
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


def _device(options: FitOptions, rank: _Rank) -> torch.device:
    if options.device:
        return torch.device(options.device)
    return torch.device(f"cuda:{rank.local}") if torch.cuda.is_available() else torch.device("cpu")


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _loader(dataset: ManifestDataset, spec: TrainSpec, options: FitOptions, rank: _Rank) -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(options.seed)
    sampler = (
        torch.utils.data.DistributedSampler(dataset, rank.world, rank.rank, shuffle=True, seed=options.seed)
        if rank.world > 1
        else torch.utils.data.RandomSampler(dataset, generator=generator)
    )
    per_rank = max(1, spec.batch_size // rank.world)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=per_rank,
        sampler=sampler,
        num_workers=options.workers,
        drop_last=len(dataset) // rank.world >= per_rank,  # BatchNorm heads cannot train on a batch of one
        worker_init_fn=lambda worker: np.random.seed((options.seed + 1000 * rank.rank + worker) % 2**32),
        generator=generator,
        persistent_workers=options.workers > 0,
    )


def _batches(loader: torch.utils.data.DataLoader, start_epoch: int) -> Iterator[tuple[int, dict[str, Any]]]:
    epoch = start_epoch
    while True:
        if isinstance(loader.sampler, torch.utils.data.DistributedSampler):
            loader.sampler.set_epoch(epoch)
        for batch in loader:
            yield epoch, batch
        epoch += 1


class _Checkpoints:
    """Files of one run folder."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.best, self.last = self.out / "best.pt", self.out / "last.pt"
        self.history, self.summary = self.out / "history.json", self.out / "summary.json"

    def write_json(self, path: Path, value: object) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(value, indent=2) + "\n")
        tmp.replace(path)

    def save(self, path: Path, value: object) -> None:
        tmp = path.with_suffix(".tmp")
        torch.save(value, tmp)
        tmp.replace(path)


def fit(
    recipe: Recipe,
    model: nn.Module,
    train: ManifestDataset,
    val: ManifestDataset,
    options: FitOptions,
    log: Callable[[dict[str, float]], None] = lambda row: None,
) -> FitResult:
    """Train ``model`` by ``recipe`` on ``train``, keep the best on ``val`` by ``recipe.train.select_by``."""
    spec = recipe.train
    objective_type = OBJECTIVES.get(spec.loss)
    if not objective_type.trainable:
        raise ValueError(f"recipe {recipe.name!r} ({spec.loss}) is not trained by gradients; see `trainer fewshot`")
    rank = _Rank.from_env()
    device = _device(options, rank)
    seed_everything(options.seed + rank.rank)
    files = _Checkpoints(options.out)
    files.out.mkdir(parents=True, exist_ok=True)
    if rank.main:
        (files.out / "recipe.json").write_text(recipe.model_dump_json(indent=2) + "\n")
    train.augment = augmenter_for(spec.augment)

    model.to(device)
    objective: Objective = objective_type(model, recipe, seed=options.seed + rank.rank)
    params = [p for p in objective.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"recipe {recipe.name!r} leaves nothing to train")
    loader = _loader(train, spec, options, rank)
    steps_per_epoch = max(1, len(loader) // spec.grad_accumulation)
    total = options.max_steps or (options.epochs or spec.epochs) * steps_per_epoch
    eval_every = options.eval_every or steps_per_epoch
    optimizer, scheduler = make_optimizer(spec, params), None
    scheduler = make_scheduler(optimizer, spec, total)
    scaler = torch.amp.GradScaler(device.type, enabled=spec.amp == "fp16" and device.type == "cuda")
    ema = None
    if spec.ema_decay > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(spec.ema_decay), use_buffers=True)
    trainer_module: nn.Module = objective
    if rank.world > 1:
        trainer_module = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )

    state = {"step": 0, "epoch": 0, "best_metric": -math.inf, "best_step": 0, "history": []}
    if options.resume and files.last.exists():
        saved = torch.load(files.last, map_location=device, weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        if ema is not None and saved.get("ema") is not None:
            ema.load_state_dict(saved["ema"])
        state = saved["state"]
        torch.set_rng_state(saved["rng"]["torch"])
        np.random.set_state(saved["rng"]["numpy"])

    progress = _progress_bar(total, state["step"], enabled=options.progress and rank.main)
    started, running, micro = time.monotonic(), [], 0
    batches = _batches(loader, state["epoch"])
    optimizer.zero_grad(set_to_none=True)
    while state["step"] < total:
        epoch, batch = next(batches)
        micro += 1
        syncing = micro % spec.grad_accumulation == 0
        sync_context = trainer_module.no_sync() if rank.world > 1 and not syncing else nullcontext()
        model.train()
        with sync_context, autocast(spec.amp, device):
            loss, parts = trainer_module(_to(batch, device), state["step"] / total)
        with sync_context:
            scaler.scale(loss / spec.grad_accumulation).backward()
        running.append({"loss": loss.item(), **parts})
        if not syncing:
            continue
        if spec.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, spec.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        state["step"], state["epoch"] = state["step"] + 1, epoch
        progress.update(1)
        progress.set_postfix(loss=f"{running[-1]['loss']:.4f}")
        out_of_time = rank.agree(
            options.time_budget_s is not None and time.monotonic() - started > options.time_budget_s
        )
        if state["step"] % eval_every == 0 or state["step"] == total or out_of_time:
            if rank.main:
                row = _evaluate(recipe, model if ema is None else ema.module, val, options, device, state, running)
                row["lr"] = scheduler.get_last_lr()[0]
                state["history"].append(row)
                log(row)
                if row["val_score"] > state["best_metric"]:
                    state["best_metric"], state["best_step"] = row["val_score"], state["step"]
                    files.save(files.best, (model if ema is None else ema.module).state_dict())
                files.write_json(files.history, state["history"])
                files.save(files.last, {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None, "state": state,
                    "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state()},
                })  # fmt: skip
            running = []
            rank.barrier()
        if out_of_time:
            break
    progress.close()
    return _finish(recipe, model, val, options, device, files, state, rank)


def _evaluate(
    recipe: Recipe,
    model: nn.Module,
    val: ManifestDataset,
    options: FitOptions,
    device: torch.device,
    state: dict[str, Any],
    running: list[dict[str, float]],
) -> dict[str, float]:
    predictions = predict_dataset(model, recipe, val, device=device, workers=options.workers)
    report = evaluation_report(recipe, val, predictions)
    row: dict[str, float] = {"step": state["step"], "epoch": state["epoch"]}
    for key in running[0] if running else ():
        row[f"train_{key}"] = float(np.mean([r[key] for r in running if key in r]))
    image = report["image"]
    row |= {f"val_{k}": float(image[k]) for k in ("roc_auc", "average_precision", "accuracy", "f1_macro")}
    if "classes" in report:
        row["val_class_accuracy"] = float(report["classes"]["accuracy"])
    if "masks" in report:
        row["val_pixel_iou"] = float(report["masks"]["pixel_iou"])
    row["val_score"] = selection_score(report, recipe.train.select_by, predictions)
    return row


def _finish(
    recipe: Recipe,
    model: nn.Module,
    val: ManifestDataset,
    options: FitOptions,
    device: torch.device,
    files: _Checkpoints,
    state: dict[str, Any],
    rank: _Rank,
) -> FitResult:
    """Load the best weights into ``model``, choose the operating threshold on validation, write the summary."""
    rank.barrier()
    model.load_state_dict(torch.load(files.best, map_location=device, weights_only=True))
    threshold = 0.5
    if rank.main:
        predictions = predict_dataset(model, recipe, val, device=device, workers=options.workers)
        if len(np.unique(predictions.fake)) == 2:
            threshold = youden_threshold(predictions.fake, predictions.p_fake)
        files.write_json(files.summary, {
            "recipe": recipe.name, "recipe_sha256": recipe.sha256, "best_step": state["best_step"],
            "select_by": recipe.train.select_by, "best_metric": state["best_metric"], "threshold": threshold,
            "threshold_rule": "youden on the validation split",
            "data": str(Path(options.data).resolve()) if options.data else None,
        })  # fmt: skip
    model.eval()
    return FitResult(state["best_metric"], state["best_step"], threshold, state["history"], files.out)


class _NoBar:
    def update(self, n: int) -> None: ...
    def set_postfix(self, **kwargs: Any) -> None: ...
    def close(self) -> None: ...


def _progress_bar(total: int, done: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, unit="step", dynamic_ncols=True)
