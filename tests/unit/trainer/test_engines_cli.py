"""``trainer engines list|show|promote|rollback`` on a store holding a few fake versions."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from deepsift.engines.manifest import BackendSpec, EngineManifest
from deepsift.engines.store import EngineStore
from deepsift.trainer.cli import main


@pytest.fixture
def store(tmp_path: Path, engine_manifest) -> EngineStore:
    """``demo`` v1–v3 (v2 current, promoted after v1) and ``other`` v1 (never promoted)."""
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"not really onnx")
    store = EngineStore(tmp_path / "engines")
    common = {
        "backend": BackendSpec(name="onnxruntime", version="1.0", precision="fp16"),
        "built_at": datetime(2025, 3, 4, 5, 6, tzinfo=UTC),
    }
    for auc in (0.91, 0.93, 0.95):
        store.add(engine_manifest("demo", threshold=0.4, evaluation={"val_roc_auc": auc}, **common), artifact)
    store.add(engine_manifest("other", recipe="sd2-vit", **common), artifact)
    store.promote("demo", 1)
    store.promote("demo", 2)
    return store


def run(store: EngineStore, *argv: str) -> int:
    return main(["--engine-store", str(store.root), "engines", *argv])


def test_list_shows_every_version_with_the_current_one_marked(store: EngineStore, capsys) -> None:
    # When all engines are listed
    assert run(store, "list") == 0
    lines = capsys.readouterr().out.splitlines()

    # Then there is a header and one row per version, sorted by name, with the figures from each manifest
    header, *lines = lines
    starts = [header.index(column) for column in ("NAME", "VERSION", "CURRENT", "BACKEND", "RECIPE", "THRESHOLD")]
    starts += [header.index("AUC"), header.index("BUILT (UTC)"), None]
    rows = [[line[a:b].strip() for a, b in itertools.pairwise(starts)] for line in lines]
    assert [r[:2] for r in rows] == [["demo", "v0001"], ["demo", "v0002"], ["demo", "v0003"], ["other", "v0001"]]
    assert rows[1] == ["demo", "v0002", "*", "onnxruntime/fp16", "demo-tiny", "0.400", "0.9300", "2025-03-04 05:06"]
    assert [r[2] for r in rows] == ["", "*", "", ""]
    assert rows[3][4:7] == ["sd2-vit", "0.500", "-"]  # no AUC recorded


def test_list_of_one_engine_and_of_an_empty_store(store: EngineStore, tmp_path: Path, capsys) -> None:
    assert run(store, "list", "other") == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["NAME", "other"]

    assert main(["--engine-store", str(tmp_path / "empty"), "engines", "list"]) == 0
    assert "no engines in" in capsys.readouterr().out


def test_show_prints_the_manifest_and_the_promotion_history(store: EngineStore, capsys) -> None:
    # When the current version is shown, then the JSON holds its manifest and both promotions
    assert run(store, "show", "demo") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["current_version"] == 2
    assert EngineManifest.model_validate(shown["manifest"]) == EngineManifest.read(store.path("demo", 2))
    assert [(p["version"], p["previous_version"]) for p in shown["promotions"]] == [(1, None), (2, 1)]

    # And an explicit version, written either way, shows that version
    for version in ("3", "v0003"):
        assert run(store, "show", "demo", "--version", version) == 0
        assert json.loads(capsys.readouterr().out)["manifest"]["evaluation"] == {"val_roc_auc": 0.95}


def test_promote_moves_current_and_records_the_reason(store: EngineStore, capsys) -> None:
    # When v3 is promoted with a reason
    assert run(store, "promote", "demo", "3", "--reason", "retrained on March data") == 0

    # Then current links to v3, the output says what it replaced, and the history has the reason
    assert store.current_version("demo") == 3 and (store.root / "demo" / "current").resolve().name == "v0003"
    assert "current is v0003 (was v0002)" in capsys.readouterr().out
    assert store.history("demo")[-1].reason == "retrained on March data"


def test_rollback_returns_to_the_previous_current_version(store: EngineStore, capsys) -> None:
    # Given v3 promoted after v2
    run(store, "promote", "demo", "3")

    # When rolled back twice, then current is v2 and then v1
    assert run(store, "rollback", "demo") == 0 and store.current_version("demo") == 2
    assert "current is v0002 (was v0003)" in capsys.readouterr().out
    assert run(store, "rollback", "demo") == 0 and store.current_version("demo") == 1

    # And a third rollback fails with a message, leaving v1 current
    capsys.readouterr()
    assert run(store, "rollback", "demo") == 1 and store.current_version("demo") == 1
    assert "no earlier promoted version" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["list", "missing"], "no engine named 'missing'"),
        (["show", "missing"], "no engine named 'missing'"),
        (["show", "demo", "--version", "7"], "engine demo has no version 7"),
        (["promote", "missing", "1"], "no engine named 'missing'"),
        (["promote", "demo", "7"], "engine demo has no version 7"),
        (["rollback", "missing"], "no engine named 'missing'"),
        (["rollback", "other"], "no current engine named 'other'"),
    ],
)
def test_unknown_engines_and_versions_exit_1_with_a_message(
    store: EngineStore, capsys, argv: list[str], message: str
) -> None:
    # When a command names an engine or version the store lacks
    assert run(store, *argv) == 1

    # Then stderr says so, and current is untouched
    assert message in capsys.readouterr().err
    assert store.current_version("demo") == 2 and store.current_version("other") is None


def test_a_malformed_version_is_a_usage_error(store: EngineStore, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run(store, "promote", "demo", "latest")
    assert exit_info.value.code == 2 and "not a version number" in capsys.readouterr().err
