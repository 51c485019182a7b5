"""The registry of backend builds: one builder per backend, and the ``trainer`` command's choices derived from it."""

from __future__ import annotations

import argparse
import subprocess
import sys
import typing

import pytest

from deepsift.engines.manifest import BackendSpec
from deepsift.trainer.artifacts import BACKEND_BUILDS, PRECISIONS, backend_build, buildable_precisions
from deepsift.trainer.build import PARITY_TOLERANCES
from deepsift.trainer.cli import build_parser


def choices(command: str, option: str) -> list[str]:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return list(next(a for a in commands.choices[command]._actions if option in a.option_strings).choices)


def test_a_second_builder_for_a_backend_is_refused():
    # Given the registered torch build; When another builder claims the name; Then it is refused, the first kept
    first = BACKEND_BUILDS.get("torch")
    with pytest.raises(ValueError, match="already registered"):
        backend_build("torch", ("fp32",), gpu=False)(lambda exported, precision, cache: None)
    assert BACKEND_BUILDS.get("torch") is first


def test_a_builder_for_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="unknown precisions"):
        backend_build("fp64-backend", ("fp64",), gpu=False)
    assert "fp64-backend" not in BACKEND_BUILDS


@pytest.mark.parametrize("command", ["build-engine", "rebuild-engine"])
def test_the_cli_offers_exactly_the_registered_backends_and_their_precisions(command: str):
    assert choices(command, "--backend") == BACKEND_BUILDS.names() == ["onnxruntime", "tensorrt", "torch"]
    assert choices(command, "--precision") == buildable_precisions() == ["fp32", "fp16", "bf16", "int8"]


def test_every_precision_has_a_parity_tolerance_and_a_manifest_value():
    assert (
        set(PARITY_TOLERANCES)
        == set(PRECISIONS)
        == set(typing.get_args(BackendSpec.model_fields["precision"].annotation))
    )
    assert all(set(BACKEND_BUILDS.get(name).precisions) <= set(PRECISIONS) for name in BACKEND_BUILDS)


def test_the_parser_builds_its_backend_choices_without_importing_torch():
    heavy = "{'torch', 'onnxruntime', 'tensorrt'}"
    code = f"import sys, trainer.cli; trainer.cli.build_parser(); print(sorted({heavy} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
