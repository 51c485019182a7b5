"""The ``trainer`` command: recipes, the demo engine and demo media, engine builds."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from engines.errors import DeepsiftError

DEFAULT_DEMO_STEPS = 700  # trainer.demo.DemoBudget.steps; repeated here so --help stays light


def cmd_recipes(args: argparse.Namespace) -> int:
    from engines.recipes import load_recipe, recipe_names

    for name in recipe_names():
        recipe = load_recipe(name)
        print(f"{name:32} {recipe.detector:14} {recipe.input.size:4}px  {recipe.description}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from engines.store import EngineStore
    from trainer.demo import DemoBudget, train_demo_engine, write_demo_media

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

    from engines.models import build_detector
    from engines.recipes import load_recipe
    from engines.store import EngineStore
    from trainer.build import build_onnx_engine

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
    manifest = build_onnx_engine(
        model, recipe, EngineStore(args.engine_store), args.name, evaluation=evaluation, promote=not args.no_promote
    )
    print(f"engine {manifest.name} v{manifest.version} built from {recipe.name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainer", description="deepsift trainer: detectors and engines")
    parser.add_argument("--engine-store", type=Path, default=Path("var/engines"), help="engine store root")
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("recipes", help="list the shipped detector recipes").set_defaults(handler=cmd_recipes)

    demo = commands.add_parser("demo", help="train the demo engine (about 2 min on CPU) and write demo media")
    demo.add_argument("--name", default="demo")
    demo.add_argument("--media", type=Path, help="also write demo videos and images with ground truth here")
    demo.add_argument("--steps", type=int, default=DEFAULT_DEMO_STEPS)
    demo.add_argument("--time-budget", type=float, default=150.0, help="stop training after this many seconds")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--force", action="store_true", help="rebuild even if a current demo engine exists")
    demo.set_defaults(handler=cmd_demo)

    build = commands.add_parser("build-engine", help="export a recipe's detector to an ONNX Runtime engine")
    build.add_argument("--recipe", required=True, help="shipped recipe name or path to a recipe JSON")
    build.add_argument("--name", required=True, help="engine name in the store")
    build.add_argument("--checkpoint", type=Path, help="detector state_dict (.pt) produced by training")
    build.add_argument("--backbone-weights", type=Path, help="local open_clip checkpoint for the image tower")
    build.add_argument("--allow-untrained", action="store_true", help="build with a random head (benchmarks only)")
    build.add_argument("--no-promote", action="store_true", help="store the version without making it current")
    build.set_defaults(handler=cmd_build_engine)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except DeepsiftError as e:
        print(f"trainer: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
