"""The ``trainer`` command: recipes, datasets, training, evaluation, few-shot adaptation, the demo and engine builds."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from deepsift.engines.cliargs import finish_parser
from deepsift.engines.errors import DeepsiftError
from deepsift.trainer.datasets_cli import add_import_dataset_command
from deepsift.trainer.logs import add_log_option, configure_logs
from deepsift.trainer.reviewed_cli import add_export_reviews_command

DEFAULT_DEMO_STEPS = 700  # trainer.demo.DemoBudget.steps; repeated here so --help stays light
Commands = argparse._SubParsersAction


def cmd_recipes(args: argparse.Namespace) -> int:
    from deepsift.engines.recipes import load_recipe, recipe_names

    for name in recipe_names():
        recipe = load_recipe(name)
        print(f"{name:30} {recipe.detector:18} {recipe.input.size:4}px  {recipe.description}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from deepsift.engines.store import EngineStore
    from deepsift.trainer.demo import DemoBudget, train_demo_engine, write_demo_media

    store = EngineStore(args.engine_store)
    if args.force or store.current_version(args.name) is None:
        budget = DemoBudget(steps=args.steps, time_budget_s=args.time_budget)
        manifest = train_demo_engine(store, args.name, budget, seed=args.seed)
        print(f"engine {manifest.name} v{manifest.version} stored in {store.root} and promoted")
    else:
        print(f"engine {args.name} v{store.current_version(args.name)} already in {store.root} (--force rebuilds)")
    if args.media:
        truth = write_demo_media(args.media)
        print(f"demo media in {args.media} (ground truth: {truth})")
    return 0


def cmd_build_engine(args: argparse.Namespace) -> int:
    import torch

    from deepsift.engines.models import build_detector
    from deepsift.engines.recipes import load_recipe
    from deepsift.engines.store import EngineStore
    from deepsift.trainer.build import build_engine

    overrides = {}
    if args.backbone_weights:
        recipe = load_recipe(args.recipe)
        overrides["backbone"] = {**recipe.backbone.model_dump(), "weights": str(args.backbone_weights)}
    recipe = load_recipe(args.recipe, **overrides)
    model = build_detector(recipe)
    if args.checkpoint:
        model.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=True))
    elif not args.allow_untrained:
        raise DeepsiftError("no --checkpoint: the head would be untrained (--allow-untrained is for benchmarks)")
    evaluation = {} if args.checkpoint else {"untrained_head": 1}
    manifest = build_engine(
        model, recipe, EngineStore(args.engine_store), args.name, backend=args.backend, precision=args.precision,
        evaluation=evaluation, promote=not args.no_promote, timing_cache=args.timing_cache,
    )  # fmt: skip
    print(f"engine {manifest.name} v{manifest.version} ({args.backend}, {args.precision}) built from {recipe.name}")
    return 0


def cmd_rebuild_engine(args: argparse.Namespace) -> int:
    from deepsift.engines.store import EngineStore
    from deepsift.trainer.logs import log_line
    from deepsift.trainer.rebuild import RebuildOptions, rebuild_engine

    options = RebuildOptions(
        recipe=args.recipe, name=args.name or args.recipe, runs=args.runs, run=args.run, data=args.data,
        backend=args.backend, precision=args.precision, calibration=args.calibration, target_fpr=args.target_fpr,
        metric=args.metric, max_metric_drop=args.max_metric_drop, promote=not args.no_promote, device=args.device,
        band_precision=args.uncertain_precision, reviewed=args.reviewed, reviewed_split=args.reviewed_split,
    )  # fmt: skip
    result = rebuild_engine(EngineStore(args.engine_store), options, log=log_line)
    manifest = result.manifest
    if result.promoted:
        print(f"engine {manifest.name} v{manifest.version} promoted")
        return 0
    if not result.gate.passed:
        print(f"engine {manifest.name} v{manifest.version} NOT promoted: {result.gate.reason}", file=sys.stderr)
        return 2
    print(f"engine {manifest.name} v{manifest.version} stored, not promoted (--no-promote)")
    return 0


def _recipe(args: argparse.Namespace):
    from deepsift.engines.recipes import load_recipe

    recipe = load_recipe(args.recipe)
    if getattr(args, "backbone_weights", None):
        recipe = load_recipe(
            args.recipe, backbone={**recipe.backbone.model_dump(), "weights": str(args.backbone_weights)}
        )
    return recipe


def cmd_import_folders(args: argparse.Namespace) -> int:
    from deepsift.trainer.data import import_binary_folders, import_class_folders, write_manifest

    if args.layout == "binary":
        rows = import_binary_folders(args.root)
    else:
        rows = import_class_folders(args.root, real_class=args.real_class)
    path = write_manifest(rows, args.root / args.manifest)
    print(f"{len(rows)} items → {path}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from deepsift.trainer.prepare import prepare

    summary = prepare(args.data, args.out, _recipe(args).input, frames=args.frames, precropped=args.precropped)
    print(
        f"{summary.media} media → {summary.crops} crops in {summary.manifest} "
        f"({summary.without_face} without a face, {summary.failed} failed)"
    )
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    import torch

    from deepsift.engines.models import build_detector
    from deepsift.trainer.data import dataset_for
    from deepsift.trainer.loop import FitOptions, fit

    recipe = _recipe(args)
    torch.manual_seed(args.seed)
    model = build_detector(recipe)
    if args.init_checkpoint:
        model.load_state_dict(torch.load(args.init_checkpoint, map_location="cpu", weights_only=True))
    options = FitOptions(
        out=args.out, epochs=args.epochs, max_steps=args.max_steps, eval_every=args.eval_every,
        time_budget_s=args.time_budget, seed=args.seed, workers=args.workers, resume=args.resume,
        progress=not args.no_progress, device=args.device, data=args.data,
    )  # fmt: skip
    result = fit(recipe, model, dataset_for(args.data, "train", recipe), dataset_for(args.data, "val", recipe), options)
    if result.main:
        print(f"best {recipe.train.select_by} {result.best_metric:.4f} at step {result.best_step}; "
              f"threshold {result.threshold:.3f}; run in {result.run_dir}")  # fmt: skip
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from deepsift.trainer.report import EvaluateOptions, evaluate_run

    options = EvaluateOptions(
        data=args.data, split=args.split, out=args.out, run=args.run, recipe=args.recipe, checkpoint=args.checkpoint,
        threshold=args.threshold, aggregation=args.aggregation, min_track_fraction=args.min_track_fraction,
        c_miss=args.c_miss, c_fa=args.c_fa, p_fake=args.p_fake, device=args.device,
    )  # fmt: skip
    report = evaluate_run(options)
    image = report["image"]
    print(
        f"{image['n']} images: AUC {image['roc_auc']:.4f}  AP {image['average_precision']:.4f}  "
        f"acc {image['accuracy']:.4f}  EER {image.get('eer', float('nan')):.4f}  DCF {image['dcf']:.4f}  → {args.out}"
    )
    return 0


def cmd_fewshot(args: argparse.Namespace) -> int:
    from deepsift.engines.models import build_detector
    from deepsift.trainer.data import dataset_for
    from deepsift.trainer.fewshot import fit_prototypes, load_encoder
    from deepsift.trainer.runs import RunFolder

    recipe = _recipe(args)
    if args.shots:
        recipe = recipe.model_copy(update={"fewshot": recipe.fewshot.model_copy(update={"shots": args.shots})})
    detector = build_detector(recipe)
    if args.encoder_checkpoint:
        load_encoder(detector, args.encoder_checkpoint)
    support, val = dataset_for(args.data, "train", recipe), dataset_for(args.data, "val", recipe)
    result = fit_prototypes(recipe, detector, support, val, seed=args.seed)
    run = RunFolder(args.out).create()
    run.save_best(detector.state_dict())
    run.write_recipe(recipe)
    rule = f"lowest threshold with validation precision >= {result.min_precision}"
    run.write_summary({"recipe": recipe.name, "recipe_sha256": recipe.sha256, **vars(result), "threshold_rule": rule})
    print(
        f"prototypes from {result.support_per_class} images per class; threshold {result.threshold:.3f} "
        f"(val precision {result.val_precision:.3f}, recall {result.val_recall:.3f}, AUC {result.val_roc_auc:.3f})"
    )
    if args.engine:
        from deepsift.engines.store import EngineStore
        from deepsift.trainer.build import build_onnx_engine

        evaluation = {f"val_{k}": v for k, v in vars(result).items() if k != "threshold"}
        manifest = build_onnx_engine(
            detector, recipe, EngineStore(args.engine_store), args.engine, threshold=result.threshold,
            evaluation=evaluation,
        )  # fmt: skip
        print(f"engine {manifest.name} v{manifest.version} built")
    return 0


def _add_recipes(commands: Commands) -> None:
    commands.add_parser("recipes", help="list the shipped detector recipes").set_defaults(handler=cmd_recipes)


def _add_demo(commands: Commands) -> None:
    demo = commands.add_parser("demo", help="train the demo engine (about 2 min on CPU) and write demo media")
    demo.add_argument("--name", default="demo", help="engine name in the store")
    demo.add_argument("--media", type=Path, help="also write demo videos and images with ground truth here")
    demo.add_argument("--steps", type=int, default=DEFAULT_DEMO_STEPS, help="training steps")
    demo.add_argument("--time-budget", type=float, default=300.0, help="stop training after this many seconds")
    demo.add_argument("--seed", type=int, default=0, help="seed of the data, the weights and the split")
    demo.add_argument("--force", action="store_true", help="rebuild even if a current demo engine exists")
    demo.set_defaults(handler=cmd_demo)


def _add_backend_choices(parser: argparse.ArgumentParser, backend_help: str | None, precision_help: str | None) -> None:
    """``--backend`` and ``--precision``, their choices from the registry of backend builds."""
    from deepsift.trainer.artifacts import BACKEND_BUILDS, buildable_precisions

    parser.add_argument("--backend", choices=BACKEND_BUILDS.names(), default="onnxruntime",
                        help=backend_help or "inference runtime of the engine")  # fmt: skip
    parser.add_argument("--precision", choices=buildable_precisions(), default="fp32",
                        help=precision_help or "numeric precision of the engine, through the parity gate")  # fmt: skip


def _add_build_engine(commands: Commands) -> None:
    build = commands.add_parser("build-engine", help="export a recipe's detector to a parity-checked engine")
    build.add_argument("--recipe", required=True, help="shipped recipe name or path to a recipe JSON")
    build.add_argument("--name", required=True, help="engine name in the store")
    build.add_argument("--checkpoint", type=Path, help="detector state_dict (.pt) produced by training")
    build.add_argument("--backbone-weights", type=Path, help="local open_clip checkpoint for the image tower")
    build.add_argument("--allow-untrained", action="store_true", help="build with a random head (benchmarks only)")
    build.add_argument("--no-promote", action="store_true", help="store the version without making it current")
    _add_backend_choices(
        build,
        backend_help="runtime that serves the engine (torch and tensorrt: the GPU paths)",
        precision_help="onnxruntime: fp32/int8 (dynamic); torch: fp32/fp16/bf16; tensorrt: any (int8: Q/DQ graphs)",
    )
    build.add_argument("--timing-cache", type=Path, help="TensorRT timing cache to reuse and update")
    build.set_defaults(handler=cmd_build_engine)


def _add_rebuild_engine(commands: Commands) -> None:
    rebuild = commands.add_parser(
        "rebuild-engine", help="newest checkpoint → calibrated, parity-checked engine → promoted unless a gate refuses"
    )
    rebuild.add_argument("recipe", help="recipe the runs were trained with")
    rebuild.add_argument("--name", help="engine name in the store (default: the recipe name)")
    rebuild.add_argument("--runs", type=Path, default=Path("runs"), help="folder of run folders (default: ./runs)")
    rebuild.add_argument("--run", type=Path, help="use this run folder instead of the newest")
    rebuild.add_argument("--data", type=Path, help="dataset manifest with a val split (default: the run's)")
    _add_backend_choices(rebuild, backend_help=None, precision_help=None)
    rebuild.add_argument("--calibration", choices=["temperature", "isotonic", "none"], default="temperature",
                         help="how logits become P(fake), fitted on the validation split")  # fmt: skip
    rebuild.add_argument("--target-fpr", type=float, default=0.01, help="false-positive rate on real validation items")
    rebuild.add_argument("--metric", default="roc_auc", help="figure the gates compare, higher is better", choices=[
        "roc_auc", "average_precision", "accuracy", "balanced_accuracy", "f1_macro"])  # fmt: skip
    rebuild.add_argument("--max-metric-drop", type=float, default=0.01, help="largest drop vs. the current engine")
    rebuild.add_argument("--no-promote", action="store_true", help="store the version without making it current")
    rebuild.add_argument("--device", help="torch device for validation (default: cuda when available)")
    rebuild.add_argument("--uncertain-precision", type=float, metavar="P", help="label media 'uncertain' where "
                         "validation is neither fake nor real with precision >= P (default: no band)")  # fmt: skip
    rebuild.add_argument("--reviewed", type=Path, metavar="MANIFEST", help="reviewed media (trainer export-reviews): "
                         "the new engine must not do worse there than the current one either")  # fmt: skip
    rebuild.add_argument("--reviewed-split", choices=["train", "val", "test"], default="test",
                         help="split of --reviewed the engines are scored on")  # fmt: skip
    rebuild.set_defaults(handler=cmd_rebuild_engine)


def _add_import_folders(commands: Commands) -> None:
    folders = commands.add_parser("import-folders", help="write a manifest for a split/class folder layout")
    folders.add_argument("root", type=Path, help="dataset root holding train/, val/, test/ folders")
    folders.add_argument("--layout", choices=["binary", "classes"], default="binary",
                         help="binary: split/REAL|FAKE; classes: split/<class>/, masks in split/masks/")  # fmt: skip
    folders.add_argument("--real-class", default="real", help="the class folder holding real media (classes layout)")
    folders.add_argument("--manifest", default="manifest.jsonl", help="file name inside root (.jsonl or .csv)")
    folders.set_defaults(handler=cmd_import_folders)


def _add_prepare(commands: Commands) -> None:
    prep = commands.add_parser("prepare", help="media → face crops (or frames) with the daemon's decode and face code")
    prep.add_argument("--data", type=Path, required=True, help="manifest of images and videos")
    prep.add_argument("--recipe", required=True, help="recipe whose input contract (crop mode, margin) applies")
    prep.add_argument("--out", type=Path, required=True, help="folder for the prepared pixels and their manifest")
    prep.add_argument("--frames", type=int, default=32, help="evenly spaced frames per video (SD²: 32)")
    prep.add_argument("--precropped", action="store_true", help="media are face crops already (seed 001): kept whole")
    prep.set_defaults(handler=cmd_prepare)


def _add_fit(commands: Commands) -> None:
    fitp = commands.add_parser("fit", help="train a recipe's detector on a manifest (torchrun for several GPUs)")
    fitp.add_argument("--recipe", required=True, help="shipped recipe name or path to a recipe JSON")
    fitp.add_argument("--data", type=Path, required=True, help="manifest with train and val splits")
    fitp.add_argument("--out", type=Path, required=True, help="run folder: best.pt, last.pt, history.json, ...")
    fitp.add_argument("--epochs", type=int, help="override the recipe's epochs")
    fitp.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    fitp.add_argument("--eval-every", type=int, help="optimizer steps between validations (default: each epoch)")
    fitp.add_argument("--time-budget", type=float, help="stop after this many seconds")
    fitp.add_argument("--backbone-weights", type=Path, help="local open_clip checkpoint for the backbone")
    fitp.add_argument("--init-checkpoint", type=Path, help="detector state_dict to start from")
    fitp.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    fitp.add_argument("--seed", type=int, default=0, help="seed of the weights and the data order")
    fitp.add_argument("--workers", type=int, default=4, help="data-loading processes")
    fitp.add_argument("--device", help="torch device (default: this rank's GPU, else CPU)")
    fitp.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    fitp.set_defaults(handler=cmd_fit)


def _add_evaluate(commands: Commands) -> None:
    ev = commands.add_parser("evaluate", help="metrics (JSON) and plots (PNG) of a trained detector on a split")
    ev.add_argument("--data", type=Path, required=True, help="dataset manifest")
    ev.add_argument("--split", default="test", choices=["train", "val", "test"], help="split to evaluate on")
    ev.add_argument("--out", type=Path, required=True, help="folder for report.json and the plots")
    ev.add_argument("--run", type=Path, help="a run folder from `trainer fit` or `trainer fewshot`")
    ev.add_argument("--recipe", help="instead of --run: a recipe …")
    ev.add_argument("--checkpoint", type=Path, help="… and a detector state_dict")
    ev.add_argument("--threshold", type=float, help="a second set of figures at it (default: the run's, from val)")
    ev.add_argument("--aggregation", default="mean", help="video rule, as the daemon's: mean, max, topk:F, quantile:Q")
    ev.add_argument(
        "--min-track-fraction", type=float, default=0.1, help="face tracks seen in fewer frames cannot decide"
    )
    ev.add_argument("--c-miss", type=float, default=1.0, help="DCF cost of a missed fake")
    ev.add_argument("--c-fa", type=float, default=1.0, help="DCF cost of a false alarm")
    ev.add_argument("--p-fake", type=float, default=0.5, help="DCF prior of a fake")
    ev.add_argument("--device", help="torch device (default: cuda when available)")
    ev.set_defaults(handler=cmd_evaluate)


def _add_fewshot(commands: Commands) -> None:
    few = commands.add_parser("fewshot", help="prototype few-shot adaptation (seed 000 §2.3) → run folder or engine")
    few.add_argument("--recipe", required=True, help="shipped recipe name or path to a recipe JSON")
    few.add_argument("--data", type=Path, required=True, help="manifest: support from train, threshold from val")
    few.add_argument("--out", type=Path, required=True, help="run folder for the fitted head")
    few.add_argument("--encoder-checkpoint", type=Path, help="trained detector whose tower.* weights are the encoder")
    few.add_argument("--backbone-weights", type=Path, help="local open_clip checkpoint for the encoder")
    few.add_argument("--shots", type=int, help="support images per class (default: the recipe's)")
    few.add_argument("--seed", type=int, default=0, help="seed of the support sampling")
    few.add_argument("--engine", help="also build an engine of this name into --engine-store")
    few.set_defaults(handler=cmd_fewshot)


def _add_engines(commands: Commands) -> None:
    from deepsift.trainer.engines_cli import add_engines_commands

    add_engines_commands(commands)


# The sub-commands in the order ``trainer --help`` lists them.
SUBCOMMANDS: tuple[Callable[[Commands], None], ...] = (
    _add_recipes, _add_demo, _add_build_engine, _add_rebuild_engine, _add_import_folders, _add_prepare, _add_fit,
    _add_evaluate, _add_fewshot, add_export_reviews_command, add_import_dataset_command, _add_engines,
)  # fmt: skip


DEFAULT_ENGINE_STORE = Path("var/engines")


def _global_options(parser: argparse.ArgumentParser, default: Any = None) -> None:
    """Options every subcommand takes, before or after its name (``engines.cliargs``)."""
    add_log_option(parser, suppress=default is not None)
    if default is None:  # the top parser: the environment's store, as the daemon reads it
        default = Path(os.environ.get("DEEPSIFT_ENGINE_STORE") or DEFAULT_ENGINE_STORE)
    parser.add_argument(
        "--engine-store", type=Path, default=default,
        help=f"engine store root (env DEEPSIFT_ENGINE_STORE; default {DEFAULT_ENGINE_STORE})",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainer", description="deepsift trainer: detectors and engines")
    _global_options(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(commands)
    return finish_parser(parser, _global_options)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        configure_logs(args)
        return args.handler(args)
    except DeepsiftError as e:
        print(f"trainer: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
