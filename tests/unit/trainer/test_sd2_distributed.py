"""SD² trained as seed 002 trains it (§4.3, Appendix D): L_D's negatives are the global batch gathered over the
ranks with gradients — two CPU processes (gloo) give the loss and the gradients of one process on the whole batch —
a recipe's L_D terms need their descriptions (or say which ablation of Table 5 the run is), and L_S's reduction is
the recipe's.

Gradients are compared as DDP leaves them: averaged over the ranks (each rank's loss divides L_D by its own images,
as Alg. 1 does, so the ranks' mean loss is the one-process loss on the whole batch)."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from PIL import Image
from pydantic import ValidationError
from structlog.testing import capture_logs

from deepsift.engines.models import build_detector
from deepsift.engines.recipes import Recipe, Sd2LossSpec, load_recipe
from deepsift.trainer.data import ManifestDataset, ManifestRow
from deepsift.trainer.distributed import Rank, data_parallel, global_batch
from deepsift.trainer.loop import FitOptions, fit
from deepsift.trainer.objectives import Sd2Objective, sd2_ablation, separation_loss

WORLD, PER_RANK = 2, 4


def with_loss(recipe: Recipe, **loss: Any) -> Recipe:
    spec = Sd2LossSpec.model_validate(recipe.train.sd2_loss.model_dump() | loss)
    return recipe.model_copy(update={"train": recipe.train.model_copy(update={"sd2_loss": spec})})


def sd2_objective(seed: int) -> Sd2Objective:
    """The tiny SD² detector with the full label sets (so ranks that drew their own labels would show), no LoRA
    dropout (every process computes the same function), non-zero LoRA up-projections (every adapter has a
    gradient) and the SigLIP bias at 0 (at its −τ start a random tower's negatives cost almost nothing, and the
    comparisons below could hardly fail); its weights are the same in every process."""
    recipe = load_recipe("tiny-sd2")
    lora = recipe.backbone.lora.model_copy(update={"dropout": 0.0})
    recipe = recipe.model_copy(update={
        "backbone": recipe.backbone.model_copy(update={"lora": lora}),
        "text_labels": recipe.text_labels.model_copy(update={"file": "sd2_text_labels.json"}),
    })  # fmt: skip
    torch.manual_seed(0)
    detector = build_detector(recipe)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in detector.named_parameters():
            if ".lora." in name:
                p.add_(0.02 * torch.randn(p.shape, generator=g))
        detector.logit_bias.zero_()
    return Sd2Objective(detector, recipe, seed=seed)


def whole_batch() -> dict[str, Any]:
    """The global batch: one face description shared by images of both ranks, environments repeating."""
    n, g = WORLD * PER_RANK, torch.Generator().manual_seed(0)
    faces = [f"a person with face number {i}" for i in range(n)]
    faces[6] = faces[1]
    return {
        "pixels": torch.rand(n, 3, 64, 64, generator=g) * 2 - 1,
        "target": torch.arange(n) % 5,
        "face_description": faces,
        "environment_description": [f"a room of kind {i % 3}" for i in range(n)],
    }


def rows_of(batch: dict[str, Any], rows: slice) -> dict[str, Any]:
    return {k: v[rows] for k, v in batch.items()}


def gradients(objective: Sd2Objective) -> dict[str, torch.Tensor]:
    return {
        n: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
        for n, p in objective.named_parameters()
        if p.requires_grad
    }


def _uneven_gather(rank: int) -> dict[str, torch.Tensor]:
    """Rank 0 holds 3 rows, rank 1 holds 2; each weighs the gathered rows differently and backpropagates."""
    rows = torch.arange(6.0).reshape(3, 2)[: 3 - rank].add(10 * rank).requires_grad_()
    gathered = global_batch(rows)
    weights = torch.arange(10.0).reshape(5, 2) * (rank + 1)
    (weights * gathered).sum().backward()
    return {"gathered": gathered.detach(), "rows_grad": rows.grad}


def _rank_main(rank: int, port: int, out: str) -> None:
    """One of the two processes: its share of the batch through the DDP-wrapped objective, then the uneven
    gather; what it found goes to ``out/rank<r>.pt``."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        objective = sd2_objective(seed=rank)  # each rank's own label draw: rank 0's must win
        module = data_parallel(objective, Rank(rank, WORLD, rank), torch.device("cpu"))
        loss, parts = module(rows_of(whole_batch(), slice(rank * PER_RANK, (rank + 1) * PER_RANK)), 0.0)
        loss.backward()
        found = {"loss": loss.item(), "parts": parts, "grads": gradients(objective), **_uneven_gather(rank)}
        torch.save(found, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Two spawned processes (gloo on a free localhost port); they import this module by the name pytest gave it,
    from the folder that name starts in (spawned children get the parent's ``sys.path``)."""
    out, root = tmp_path_factory.mktemp("ranks"), str(Path(__file__).parents[__name__.count(".")])
    sys.path.insert(0, root)
    try:
        torch.multiprocessing.spawn(_rank_main, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    finally:
        sys.path.remove(root)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def test_two_ranks_give_the_loss_and_gradients_of_one_process_on_the_global_batch(ranks: list[dict]) -> None:
    # Given one process on the whole batch (rank 0's seed, so rank 0's label draw)
    objective = sd2_objective(seed=0)
    loss, parts = objective(whole_batch(), 0.0)
    loss.backward()

    # Then the ranks' mean loss, and each L_D term's mean, is its loss
    assert np.mean([r["loss"] for r in ranks]) == pytest.approx(loss.item(), abs=1e-5)
    for name in ("l_c", "l_s", "l_d_face", "l_d_env"):
        assert np.mean([r["parts"][name] for r in ranks]) == pytest.approx(parts[name], abs=1e-5)
    # and DDP's averaged gradients are its gradients, on both ranks, adapters of both towers included
    expected = gradients(objective)
    assert any(".transformer." in n and ".lora." in n and g.abs().sum() > 0 for n, g in expected.items())
    for found in ranks:
        assert found["grads"].keys() == expected.keys()
        for name, grad in expected.items():
            torch.testing.assert_close(found["grads"][name], grad, atol=1e-5, rtol=1e-5, msg=name)


def test_each_rank_alone_would_see_another_loss(ranks: list[dict]) -> None:
    # Given the batch's halves each scored alone, as before the gather (3 negatives per image, not 7)
    objective = sd2_objective(seed=0)
    with torch.no_grad():
        alone = [objective(rows_of(whole_batch(), slice(r * PER_RANK, (r + 1) * PER_RANK)), 0.0)[1] for r in (0, 1)]

    # Then their L_D differs from the gathered ranks' (the comparison above can fail)
    for r in range(WORLD):
        assert abs(alone[r]["l_d_face"] - ranks[r]["parts"]["l_d_face"]) > 1e-2


def test_the_gather_takes_uneven_rows_and_sends_every_rank_its_rows_gradient(ranks: list[dict]) -> None:
    # Given rank 0 with rows 0-2 and rank 1 with rows 10-11, each weighing the gathered rows by (rank + 1)·w
    everything = torch.cat([torch.arange(6.0).reshape(3, 2), torch.arange(4.0).reshape(2, 2) + 10])
    weights = torch.arange(10.0).reshape(5, 2)

    # Then both see all rows in rank order, and each row's gradient is the sum over the ranks: (1 + 2)·w
    for found in ranks:
        torch.testing.assert_close(found["gathered"], everything)
    torch.testing.assert_close(ranks[0]["rows_grad"], 3 * weights[:3])
    torch.testing.assert_close(ranks[1]["rows_grad"], 3 * weights[3:])


def write_images(root: Path, n: int = 8) -> list[ManifestRow]:
    """Random 64 px images, half real and half face swaps, the first 6 for training; no descriptions."""
    rng, rows = np.random.default_rng(0), []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / f"{i}.png")
        fake = i % 2 == 1
        rows.append(ManifestRow(
            path=f"{i}.png", label="fake" if fake else "real", split="train" if i < 6 else "val",
            manipulation="face_swapping" if fake else "",
        ))  # fmt: skip
    return rows


def datasets(rows: list[ManifestRow], root: Path, recipe: Recipe) -> tuple[ManifestDataset, ManifestDataset]:
    return tuple(ManifestDataset([r for r in rows if r.split == s], root, recipe) for s in ("train", "val"))


def test_without_descriptions_training_is_refused_unless_l_d_is_off(tmp_path: Path) -> None:
    # Given training rows without face or environment descriptions
    rows = write_images(tmp_path)
    recipe = load_recipe("tiny-sd2")

    # When the full SD² recipe trains on them, then it is refused before a run folder exists
    with pytest.raises(ValueError, match="6 of 6 training rows have no face_description"):
        fit(recipe, build_detector(recipe), *datasets(rows, tmp_path, recipe), FitOptions(out=tmp_path / "full"))
    assert not (tmp_path / "full").exists()

    # When the recipe turns L_D off, then it trains, and the log and the summary say it is Table 5's row 2
    recipe = with_loss(recipe, description_terms=())
    options = FitOptions(out=tmp_path / "no-l-d", max_steps=1, progress=False)
    with capture_logs() as logs:
        fit(recipe, build_detector(recipe), *datasets(rows, tmp_path, recipe), options)
    summary = json.loads((tmp_path / "no-l-d" / "summary.json").read_text())
    assert "Table 5 row 2: L_C + CLAM, no L_D" in summary["ablation"]
    assert [e["ablation"] for e in logs if e["event"] == "objective"] == [summary["ablation"]]
    assert summary["description_negatives"] == 0 and summary["separation_reduction"] == "sum"


def test_a_batch_missing_a_description_its_term_needs_is_refused() -> None:
    objective = sd2_objective(seed=0)
    batch = whole_batch()
    batch["environment_description"][3] = ""
    with pytest.raises(ValueError, match="no environment_description"):
        objective(batch, 0.0)


def test_the_ablation_row_follows_the_l_d_terms() -> None:
    assert "row 4" in sd2_ablation(("environment", "face")) and "87.79" in sd2_ablation(("face", "environment"))
    assert "row 3" in sd2_ablation(("face",)) and "84.34" in sd2_ablation(("face",))
    assert "not a row" in sd2_ablation(("environment",))


def test_l_s_is_equation_4_summed_or_algorithm_1_averaged_as_the_recipe_says() -> None:
    # Given five label features
    labels = torch.randn(5, 16, generator=torch.Generator().manual_seed(0))
    unit = torch.nn.functional.normalize(labels, dim=-1)
    frobenius = torch.linalg.matrix_norm(unit @ unit.T - torch.eye(5)) ** 2

    # Then "sum" is Eq. 4's squared Frobenius norm and "mean" 1/25 of it
    torch.testing.assert_close(separation_loss(labels, "sum"), frobenius)
    torch.testing.assert_close(separation_loss(labels, "mean"), frobenius / 25)

    # and the objective reports the recipe's choice
    objective = sd2_objective(seed=0)
    mean = Sd2Objective(objective.detector, with_loss(objective.recipe, separation_reduction="mean"), seed=0)
    with torch.no_grad():
        summed, averaged = objective(whole_batch(), 0.0)[1]["l_s"], mean(whole_batch(), 0.0)[1]["l_s"]
    assert averaged == pytest.approx(summed / 25, rel=1e-5)


def test_l_d_has_one_switch() -> None:
    with pytest.raises(ValidationError, match="description_terms"):
        Sd2LossSpec(description=0.0)
    with pytest.raises(ValidationError, match="twice"):
        Sd2LossSpec(description_terms=("face", "face"))
    assert Sd2LossSpec(description=0.0, description_terms=()).description_terms == ()
