"""The training loop for every gradient-trained recipe: AdamW/Adam, cosine schedule with warmup, AMP (fp16 with a
grad scaler on CUDA, bf16 anywhere), gradient accumulation and clipping, EMA, best checkpoint by the recipe's
metric, resume, fixed seeds, progress bars, progressive resizing (``trainer.progressive``), and DDP when started
by ``torchrun``.

What it writes is a run folder (``trainer.runs.RunFolder``): the best detector weights, a checkpoint to resume
from, the training curves, the recipe, and last the summary (best figure, step, the validation-chosen threshold).

``fit`` reads top to bottom: set up (``_set_up``), step (``_train``: ``_accumulate`` per micro-batch,
``_optimizer_step`` per step), validate and save (``_validate``, ``_save_progress``), finish (``_finish``).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepsift.engines.logs import json_logs
from deepsift.engines.models.resolution import at_input_size, check_input_sizes
from deepsift.engines.recipes import Recipe, TrainSpec
from deepsift.trainer.augment import augmenter_for
from deepsift.trainer.data import ManifestDataset
from deepsift.trainer.distributed import Rank, data_parallel, epoch_batches, rank_device, rank_loader, to_device
from deepsift.trainer.evaluate import autocast, evaluation_report, predict_dataset, selection_score
from deepsift.trainer.logs import event
from deepsift.trainer.metrics import youden_threshold
from deepsift.trainer.objectives import OBJECTIVES, Objective
from deepsift.trainer.progressive import resize_batch, stage_size
from deepsift.trainer.runs import RunFolder


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
    main: bool = True  # this process is the main rank, which alone validates (the others' figures are empty)


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
class _Run:
    """The fixed facts of one fit: the recipe, the validation split, the options, this rank and its device, the
    run folder, and where validation rows go."""

    recipe: Recipe
    val: ManifestDataset
    options: FitOptions
    rank: Rank
    device: torch.device
    files: RunFolder
    log: Callable[[dict[str, float]], None]


@dataclass
class _Training:
    """What the loop steps and ``last.pt`` saves: the detector, the objective DDP sees, the optimizer and the rest."""

    model: nn.Module
    module: nn.Module  # the objective, DDP-wrapped on several ranks
    params: list[nn.Parameter]
    loader: torch.utils.data.DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    ema: Any  # torch.optim.swa_utils.AveragedModel, or None
    total: int  # optimizer steps
    accumulation: int  # micro-batches per optimizer step on this rank
    eval_every: int  # optimizer steps

    @property
    def evaluated(self) -> nn.Module:
        """The weights validated and kept as the best: the EMA's when there is one."""
        return self.model if self.ema is None else self.ema.module

    def checkpoint(self, state: dict[str, Any]) -> dict[str, Any]:
        """Everything ``restore`` needs to continue from here."""
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None, "state": state,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state()},
        }  # fmt: skip

    def restore(self, saved: dict[str, Any]) -> dict[str, Any]:
        """Load a ``checkpoint`` back; the loop state it was saved with."""
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        if self.ema is not None and saved.get("ema") is not None:
            self.ema.load_state_dict(saved["ema"])
        torch.set_rng_state(saved["rng"]["torch"])
        np.random.set_state(saved["rng"]["numpy"])
        return saved["state"]


def _fresh_state() -> dict[str, Any]:
    """The loop state (saved in ``last.pt``): where training is, the best validation figure so far, the history."""
    return {"step": 0, "epoch": 0, "best_metric": -math.inf, "best_step": 0, "history": []}


def _ema(model: nn.Module, decay: float) -> Any:
    if decay <= 0:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _set_up(objective_type: type[Objective], model: nn.Module, train: ManifestDataset, run: _Run) -> _Training:
    """The objective on this rank's device, its trainable parameters, the loader, the step budget, the optimizer,
    its schedule, the AMP scaler and the EMA."""
    spec, options, rank, device = run.recipe.train, run.options, run.rank, run.device
    model.to(device)
    objective: Objective = objective_type(model, run.recipe, seed=options.seed + rank.rank)
    params = [p for p in objective.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"recipe {run.recipe.name!r} leaves nothing to train")
    loader = rank_loader(train, spec.micro_batch(rank.world), options.seed, options.workers, rank)
    accumulation = spec.accumulation(rank.world)
    steps_per_epoch = max(1, len(loader) // accumulation)
    total = options.max_steps or (options.epochs or spec.epochs) * steps_per_epoch
    optimizer = make_optimizer(spec, params)
    scheduler = make_scheduler(optimizer, spec, total)
    scaler = torch.amp.GradScaler(device.type, enabled=spec.amp == "fp16" and device.type == "cuda")
    ema = _ema(model, spec.ema_decay)  # a copy of the weights before DDP broadcasts rank 0's
    module = data_parallel(objective, rank, device)
    eval_every = options.eval_every or steps_per_epoch
    return _Training(model, module, params, loader, optimizer, scheduler, scaler, ema, total, accumulation, eval_every)


def fit(
    recipe: Recipe,
    model: nn.Module,
    train: ManifestDataset,
    val: ManifestDataset,
    options: FitOptions,
    log: Callable[[dict[str, float]], None] = lambda row: None,
) -> FitResult:
    """Train ``model`` by ``recipe`` on ``train``, keep the best on ``val`` by ``recipe.train.select_by``."""
    objective_type = OBJECTIVES.get(recipe.train.loss)
    if not objective_type.trainable:
        raise ValueError(
            f"recipe {recipe.name!r} ({recipe.train.loss}) is not trained by gradients; see `trainer fewshot`"
        )
    objective_type.check_data(recipe, train.rows)
    check_input_sizes(model, [stage.size for stage in recipe.train.progressive_resize])
    rank = Rank.from_env()
    device = rank_device(options.device, rank)
    seed_everything(options.seed + rank.rank)
    run = _Run(recipe, val, options, rank, device, RunFolder(options.out).create(), log)
    if rank.main:
        run.files.write_recipe(recipe)
        if notes := objective_type.run_notes(recipe, rank.world):
            event("objective", recipe=recipe.name, loss=recipe.train.loss, **notes)
    train.augment = augmenter_for(recipe.train.augment)
    training = _set_up(objective_type, model, train, run)
    state = _fresh_state()
    if options.resume and run.files.last.exists():
        state = training.restore(run.files.load_last(device))
    state["images_per_step"] = training.loader.batch_size * rank.world * training.accumulation  # for the summary
    _train(run, training, state)
    return _finish(run, model, state)


def _train(run: _Run, training: _Training, state: dict[str, Any]) -> None:
    """Optimizer steps until the step budget (or the time budget) is spent; validate and save every
    ``eval_every`` steps and at the end."""
    spec, options, rank = run.recipe.train, run.options, run.rank
    progress = _progress_bar(training.total, state["step"], enabled=options.progress and rank.main)
    started, running, micro = time.monotonic(), [], 0
    batches = epoch_batches(training.loader, state["epoch"])
    training.optimizer.zero_grad(set_to_none=True)
    while state["step"] < training.total:
        epoch, batch = next(batches)
        micro += 1
        syncing = micro % training.accumulation == 0
        size = stage_size(run.recipe, state["step"] / training.total)
        if rank.main and size != state.get("input_size"):
            event("input_size", step=state["step"], size=size or run.recipe.input.size)
        state["input_size"] = size
        running.append(_accumulate(run, training, batch, state["step"], syncing, size))
        if not syncing:
            continue
        _optimizer_step(training, spec.grad_clip)
        state["step"], state["epoch"] = state["step"] + 1, epoch
        progress.update(1)
        progress.set_postfix(loss=f"{running[-1]['loss']:.4f}")
        out_of_time = rank.agree(
            options.time_budget_s is not None and time.monotonic() - started > options.time_budget_s
        )
        if state["step"] % training.eval_every == 0 or state["step"] == training.total or out_of_time:
            if rank.main:
                _validate(run, training, state, running)
                _save_progress(run.files, training, state)
            running = []
            rank.barrier()
        if out_of_time:
            break
    progress.close()


def _accumulate(
    run: _Run, training: _Training, batch: dict[str, Any], step: int, syncing: bool, size: int | None
) -> dict[str, float]:
    """Forward and backward one micro-batch at ``size`` (a progressive_resize stage; None: the contract's); across
    ranks, gradients are summed on a step's last micro-batch only. The figures of the batch's loss."""
    spec = run.recipe.train
    training.model.train()
    batch = resize_batch(to_device(batch, run.device), size, run.recipe)
    unsynced = training.module.no_sync() if run.rank.world > 1 and not syncing else nullcontext()
    with unsynced, at_input_size(training.model, size):  # a progressive_resize stage: towers read a smaller grid
        with autocast(spec.amp, run.device):
            loss, parts = training.module(batch, step / training.total)
        training.scaler.scale(loss / training.accumulation).backward()
    return {"loss": loss.item(), **parts}


def _optimizer_step(training: _Training, grad_clip: float) -> None:
    """Clip, step (through the AMP scaler), clear the gradients, advance the schedule and the EMA."""
    if grad_clip > 0:
        training.scaler.unscale_(training.optimizer)
        torch.nn.utils.clip_grad_norm_(training.params, grad_clip)
    training.scaler.step(training.optimizer)
    training.scaler.update()
    training.optimizer.zero_grad(set_to_none=True)
    training.scheduler.step()
    if training.ema is not None:
        training.ema.update_parameters(training.model)


def _validate(run: _Run, training: _Training, state: dict[str, Any], running: list[dict[str, float]]) -> None:
    """Score the validation split into the history; keep the weights as ``best.pt`` if they are the best yet."""
    row = _evaluate(run, training.evaluated, state, running)
    row["lr"] = training.scheduler.get_last_lr()[0]
    state["history"].append(row)
    run.log(row)
    best = row["val_score"] > state["best_metric"]
    if best:
        state["best_metric"], state["best_step"] = row["val_score"], state["step"]
        run.files.save_best(training.evaluated.state_dict())
    event("validation", **{k: round(v, 4) for k, v in row.items()}, n=len(run.val), best=best)


def _save_progress(files: RunFolder, training: _Training, state: dict[str, Any]) -> None:
    files.write_history(state["history"])
    files.save_last(training.checkpoint(state))


def _evaluate(run: _Run, model: nn.Module, state: dict[str, Any], running: list[dict[str, float]]) -> dict[str, float]:
    """One history row: the step, the mean training figures since the last row, and the validation figures."""
    recipe = run.recipe
    predictions = predict_dataset(model, recipe, run.val, device=run.device, workers=run.options.workers)
    report = evaluation_report(recipe, run.val, predictions)
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


def _finish(run: _Run, model: nn.Module, state: dict[str, Any]) -> FitResult:
    """Load the best weights into ``model``, choose the operating threshold on validation, write the summary."""
    recipe, options = run.recipe, run.options
    run.rank.barrier()
    model.load_state_dict(run.files.load_best(run.device))
    threshold = 0.5
    if run.rank.main:
        predictions = predict_dataset(model, recipe, run.val, device=run.device, workers=options.workers)
        if len(np.unique(predictions.fake)) == 2:
            threshold = youden_threshold(predictions.fake, predictions.p_fake)
        run.files.write_summary({
            "recipe": recipe.name, "recipe_sha256": recipe.sha256, "best_step": state["best_step"],
            "select_by": recipe.train.select_by, "best_metric": state["best_metric"], "threshold": threshold,
            "ranks": run.rank.world, "images_per_step": state["images_per_step"],
            "threshold_rule": "youden on the validation split",
            "data": str(Path(options.data).resolve()) if options.data else None,
            **OBJECTIVES.get(recipe.train.loss).run_notes(recipe, run.rank.world),
        })  # fmt: skip
    model.eval()
    return FitResult(
        state["best_metric"], state["best_step"], threshold, state["history"], run.files.path, run.rank.main
    )


class _NoBar:
    def update(self, n: int) -> None: ...
    def set_postfix(self, **kwargs: Any) -> None: ...
    def close(self) -> None: ...


def _progress_bar(total: int, done: int, enabled: bool) -> Any:
    """tqdm on stderr, unless turned off or the logs are JSON lines (a bar is no JSON)."""
    if not enabled or json_logs():
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, unit="step", dynamic_ncols=True)
