"""Run identity and folder layout: ``{name}_{YYYYmmdd_HHMMSS}_{git_hash}`` folders as in the seed.

The git hash comes from the repository this package was imported from, not the current directory
(the original read whatever repo the user happened to stand in, spec 8), together with a dirty flag.
Ids never collide: within a process a repeated id gets a ``-2``, ``-3`` suffix, and across processes
:func:`generate_experiment_id` claims the run folder with an exclusive ``mkdir`` when given the base
folder, so two trials started in the same second get distinct folders.
"""

from __future__ import annotations

import re
import subprocess
import threading
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import TypedDict

MAX_NAME_LEN = 100
"""Longest sanitised run name; keeps folder names well under file-system limits."""

_PACKAGE_DIR = Path(__file__).resolve().parent
_issued: set[str] = set()
_issued_lock = threading.Lock()


class GitInfo(TypedDict):
    """The code version a run used: short commit hash (or ``"unknown"``) and uncommitted changes."""

    hash: str
    dirty: bool | None


class ExperimentDirs(TypedDict):
    """The seed's layout of one run folder."""

    root: Path
    checkpoints: Path
    logs: Path
    visualizations: Path


RUN_SUBFOLDERS = ("checkpoints", "logs", "visualizations")
"""The folders of a run folder (:class:`ExperimentDirs` less its root)."""


def get_git_info(path: Path | str | None = None) -> GitInfo:
    """Commit and dirty flag of the git repository holding ``path`` (default: this package).

    ``dirty`` ignores untracked files (run outputs inside the repo would otherwise always count);
    outside a repository, or with no commit yet, the hash is ``"unknown"`` and ``dirty`` is ``None``.
    """
    where = Path(path) if path is not None else _PACKAGE_DIR
    head = _git(where, "rev-parse", "--short", "HEAD")
    if head is None:
        return {"hash": "unknown", "dirty": None}
    status = _git(where, "status", "--porcelain", "--untracked-files=no")
    return {"hash": head, "dirty": None if status is None else bool(status)}


@lru_cache(maxsize=1)
def package_git_info() -> GitInfo:
    """:func:`get_git_info` of this package, computed once per process (checkpoints stamp it often)."""
    return get_git_info()


def get_git_hash() -> str:
    """The seed's ``get_git_hash()``: short commit hash of this package's repository or ``"unknown"``."""
    return package_git_info()["hash"]


def sanitize_name(name: str) -> str:
    """``name`` made safe as one folder name: only ``[A-Za-z0-9._-]``, no leading dot, at most 100 chars.

    Raises ``ValueError`` when nothing usable is left, since an empty name cannot identify a run.
    """
    clean = re.sub(r"[^A-Za-z0-9._-]", "_", str(name)).lstrip(".")[:MAX_NAME_LEN]
    if not clean:
        raise ValueError(f"experiment name {name!r} is empty after sanitising; use letters, digits, . _ -")
    return clean


def generate_experiment_id(name: str, base_dir: Path | str | None = None) -> str:
    """A new run id ``{name}_{YYYYmmdd_HHMMSS}_{git_hash}``, distinct from every other id.

    Without ``base_dir`` the id is unique within this process. With ``base_dir`` the folder
    ``base_dir/<id>`` is also created exclusively, so processes sharing that folder never get the
    same id; on a clash the id gains a ``-2``, ``-3``, ... suffix.
    """
    stem = f"{sanitize_name(name)}_{datetime.now():%Y%m%d_%H%M%S}_{get_git_hash()}"
    base = Path(base_dir) if base_dir is not None else None
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        candidate = stem if n == 1 else f"{stem}-{n}"
        n += 1
        with _issued_lock:
            if candidate in _issued:
                continue
            if base is not None:
                try:
                    (base / candidate).mkdir()
                except FileExistsError:
                    continue
            _issued.add(candidate)
            return candidate


def create_experiment_directory(base_dir: Path | str, experiment_id: str) -> ExperimentDirs:
    """Create (or reuse, for a resumed run) the run folder and its subfolders; return their paths.

    ``config.json`` and ``results.json`` appear only when :class:`ConfigTracker` writes them.
    """
    root = Path(base_dir) / sanitize_name(experiment_id)
    dirs = ExperimentDirs(root=root, **{name: root / name for name in RUN_SUBFOLDERS})
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    return dirs


def _git(where: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(where), *args], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None
