"""A versioned on-disk engine store: ``ROOT/NAME/vNNNN/{artifact, manifest.json}`` and ``ROOT/NAME/current``.

New versions are assembled in a temporary folder and renamed into place, so a half-written engine is
never visible; ``current`` is a symlink switched with an atomic rename, so a daemon reading it sees the
old engine or the new one, never neither.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
from pathlib import Path

from engines.errors import EngineError
from engines.manifest import EngineManifest

_VERSION_DIR = re.compile(r"^v(\d{4,})$")
CURRENT = "current"


class EngineStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def versions(self, name: str) -> list[int]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        found = (_VERSION_DIR.match(p.name) for p in folder.iterdir() if p.is_dir() and not p.is_symlink())
        return sorted(int(m.group(1)) for m in found if m)

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []

    def path(self, name: str, version: int) -> Path:
        return self.root / name / f"v{version:04d}"

    def add(self, manifest: EngineManifest, artifact: Path) -> EngineManifest:
        """Store ``artifact`` as the next version of ``manifest.name``; returns the manifest as stored."""
        folder = self.root / manifest.name
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder))
        try:
            staging.chmod(folder.stat().st_mode & 0o777)  # mkdtemp's 0700 would hide the engine from the daemon's user
            shutil.copyfile(artifact, staging / manifest.artifact)
            while True:
                version = (self.versions(manifest.name) or [0])[-1] + 1
                stored = manifest.model_copy(update={"version": version})
                stored.write(staging)
                try:
                    staging.rename(self.path(manifest.name, version))  # atomic; fails if another writer won
                    return stored
                except OSError:
                    if not self.path(manifest.name, version).exists():
                        raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def promote(self, name: str, version: int) -> None:
        """Point ``NAME/current`` at ``version`` with one atomic rename."""
        target = self.path(name, version)
        if not target.is_dir():
            raise EngineError(f"engine {name} has no version {version} in {self.root}")
        link = self.root / name / CURRENT
        tmp = link.with_name(f".{CURRENT}-{os.getpid()}-{threading.get_ident()}")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target.name)
        os.replace(tmp, link)

    def current_version(self, name: str) -> int | None:
        link = self.root / name / CURRENT
        if not link.is_symlink():
            return None
        match = _VERSION_DIR.match(os.readlink(link))
        return int(match.group(1)) if match else None

    def resolve(self, name: str, version: int | None = None) -> Path:
        """The folder of ``version``, or of the current version when ``version`` is None."""
        version = self.current_version(name) if version is None else version
        if version is None:
            raise EngineError(f"no current engine named {name!r} in {self.root}; build one (see README)")
        path = self.path(name, version)
        if not path.is_dir():
            raise EngineError(f"engine {name} v{version} is missing from {self.root}")
        return path
