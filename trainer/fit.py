"""A small, honest training loop for binary detectors: AdamW on the trainable parameters, BCE with
``pos_weight``, optional autocast, and the best checkpoint by the recipe's validation metric."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from deepsift.engines.recipes import Recipe
from deepsift.trainer.logs import event
from deepsift.trainer.metrics import binary_metrics


@dataclass
class FitResult:
    model: nn.Module
    best_metric: float
    best_step: int
    history: list[dict[str, float]] = field(default_factory=list)


def predict_p_fake(model: nn.Module, pixels: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        logits = [model(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)]
    return torch.sigmoid(torch.cat(logits)).numpy()


def _score(recipe: Recipe, y: np.ndarray, p: np.ndarray) -> float:
    if recipe.train.select_by == "loss":
        eps = 1e-7
        return -float(np.mean(-(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps))))
    found = binary_metrics(y, p)
    return found["roc_auc"] if recipe.train.select_by == "auc" else found["f1_macro"]


def _autocast(recipe: Recipe):
    if recipe.train.amp == "none":
        return torch.autocast("cpu", enabled=False)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if recipe.train.amp == "fp16" and device == "cuda" else torch.bfloat16
    return torch.autocast(device, dtype=dtype)


def fit_binary(
    model: nn.Module,
    recipe: Recipe,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    *,
    steps: int,
    eval_every: int = 100,
    seed: int = 0,
    time_budget_s: float | None = None,
    log: Callable[[dict[str, float]], None] = lambda row: None,
) -> FitResult:
    """Train for ``steps`` mini-batches (or until ``time_budget_s``), keeping the best model on ``val``."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x_train, y_train = train
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=recipe.train.lr, weight_decay=recipe.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.train.lr, total_steps=steps)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(recipe.train.pos_weight))
    best = FitResult(model=copy.deepcopy(model), best_metric=-float("inf"), best_step=0)
    started = time.monotonic()
    for step in range(1, steps + 1):
        model.train()
        idx = torch.randint(len(x_train), (recipe.train.batch_size,), generator=generator)
        with _autocast(recipe):
            loss = loss_fn(model(x_train[idx]).float(), y_train[idx].float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        out_of_time = time_budget_s is not None and time.monotonic() - started > time_budget_s
        if step % eval_every == 0 or step == steps or out_of_time:
            metric = _score(recipe, val[1].numpy(), predict_p_fake(model, val[0]))
            row = {"step": step, "loss": loss.item(), recipe.train.select_by: metric}
            best.history.append(row)
            log(row)
            figures = {k: round(v, 4) for k, v in row.items()}
            event("validation", **figures, n=len(val[1]), best=metric > best.best_metric)
            if metric > best.best_metric:
                best.model, best.best_metric, best.best_step = copy.deepcopy(model), metric, step
        if out_of_time:
            break
    best.model.eval()
    return best
