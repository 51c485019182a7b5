"""The wheel as a user installs it: import names under ``deepsift.``, migrations inside, no source tree needed.

The wheel is built from this checkout and installed (without dependencies) into a fresh virtual environment
whose only view of the dependencies is a ``.pth`` line naming this environment's site-packages. That line adds
the folder to ``sys.path`` but runs none of its ``.pth`` files, so the editable install of the checkout stays
invisible: ``deepsift`` can only come from the wheel. The commands then run from an empty folder.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from deepsift.engines.store import EngineStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
GENERIC_NAMES = ("daemon", "trainer", "engines", "alembic")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("deepsift-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel installed; returns its bin folder."""
    env = tmp_path_factory.mktemp("venv")
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], check=True, capture_output=True,
        text=True,
    ).stdout.strip()  # fmt: skip
    (Path(purelib) / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", "--no-index",
         str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return env / "bin"


def test_the_wheel_holds_the_migrations_and_no_generic_top_level_import_name(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert {t for t in top_level if not t.endswith(".dist-info")} == {"deepsift"}
    assert not top_level & set(GENERIC_NAMES)
    for migration in sorted((ROOT / "alembic" / "versions").glob("*.py")):
        assert f"deepsift/migrations/versions/{migration.name}" in names
    assert "deepsift/migrations/env.py" in names and "deepsift/migrations/script.py.mako" in names
    assert "deepsift/engines/recipes/demo-tiny.json" in names
    assert "deepsift/daemon/report/templates/verdict.html.j2" in names


def test_the_installed_wheel_migrates_and_scans_without_a_source_tree(
    installed: Path, full_frame_store: EngineStore, tmp_path: Path
) -> None:
    # Given an empty working folder, far from the checkout, and a photo to judge
    work = tmp_path / "work"
    work.mkdir()
    from PIL import Image
    from skimage import data

    Image.fromarray(data.astronaut()).save(work / "photo.jpg")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "DEEPSIFT_ENGINE_STORE": str(full_frame_store.root),
        "DEEPSIFT_ENGINE_NAME": "tiny-full",
        "DEEPSIFT_LOG_FORMAT": "json",
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=600)

    # Then deepsift comes from the wheel, not from the checkout
    where = run(str(installed / "python"), "-c", "import deepsift.daemon, sys; print(deepsift.daemon.__file__)")
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(installed.parent) and ROOT not in Path(where.stdout).parents
    for name in GENERIC_NAMES[:3]:
        probe = run(str(installed / "python"), "-c", f"import importlib.util as u; print(u.find_spec('{name}'))")
        assert probe.stdout.strip() == "None", f"{name} is importable: {probe.stdout}"

    # When the schema is migrated and the photo scanned by the installed commands
    upgrade = run(str(installed / "daemon"), "db", "upgrade")
    scan = run(str(installed / "daemon"), "scan", "photo.jpg", "--report", "report")

    # Then both work, and the verdict is in the embedded SQLite database under the working folder
    assert upgrade.returncode == 0, upgrade.stderr
    assert scan.returncode == 0, scan.stderr
    with sqlite3.connect(work / "var" / "deepsift.db") as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        rows = db.execute("SELECT status, engine_name FROM verdicts").fetchall()
    assert {"verdicts", "engines", "job_attempts"} <= tables
    assert rows == [("ok", "tiny-full")]
    # And the report's templates came with the wheel: the scan wrote its index and the verdict's page
    assert "tiny-full" in (work / "report" / "verdict-1.html").read_text()
    assert 'href="verdict-1.html"' in (work / "report" / "index.html").read_text()
