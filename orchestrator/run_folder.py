"""Which folder a run trains in: the unfinished run of its name that a rerun continues (same model,
training settings and data), or a new one; and the lock by which one driver at a time trains it.

The folder is found by name before Ray starts, so a rerun that would change what the run computes
is refused with one line, and so is a second command while the first still trains.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from orchestrator.monitoring import create_experiment_directory, generate_experiment_id
from orchestrator.monitoring.identity import RUN_SUBFOLDERS
from orchestrator.settings import RunSettings
from orchestrator.storage import claim_run_location, is_uri, list_run_folders
from spectral_gpt.config import ConfigError

RESUMABLE_CHANGES = frozenset({"train.compile"})
"""Settings a run may change when it is continued: how a step runs, not what it computes (a compiled
step computes the eager step's mathematics, tests/test_compile.py), so a run started eagerly can go
on under ``--compile`` once it moves to a GPU, and the other way round."""


def run_has_ended(results: dict[str, Any]) -> bool:
    """Whether a run has ended for good: completed, or ended by its own loop (diverged, stopped early).

    A run that failed with no final metrics was given up by the infrastructure (workers kept dying,
    Ctrl-C): continuing it is worth it. A diverged run would diverge again, and its user's next step is
    a rerun with other settings, which must start a new run rather than be refused as a changed one.
    """
    status = results.get("status")
    return status == "completed" or (status in ("failed", "stopped") and bool(results.get("final_metrics")))


def find_unfinished_run(settings: RunSettings) -> Path | str | None:
    """The newest run folder of this name that has not ended (:func:`run_has_ended`).

    A path, or a URI when the output is storage (the monitoring actor downloads that run).
    """
    candidates = [f for f in list_run_folders(settings.output, f"{settings.name}_")
                  if f.config.get("name") == settings.name and not run_has_ended(f.results)]
    if not candidates:
        return None
    newest = max(candidates, key=lambda f: f.config_mtime)
    differs = (first_difference(newest.config.get("spec"), settings.spec.to_dict(), ignore=RESUMABLE_CHANGES)
               or first_difference(data_identity(newest.config), data_identity(settings.to_dict()), "data"))
    if differs:
        raise ConfigError(f"the unfinished run {newest.location} was started with other settings ({differs}); "
                          "rerun it with the same flags, or pass --resume never to start a new run")
    return newest.location if is_uri(newest.location) else Path(newest.location)


def data_identity(config: dict[str, Any]) -> dict[str, Any]:
    """What a run trains on, from its settings' dict form: the corpus and the vocabulary (not the cache
    folder, which only keeps the tokens). The spec does not hold it, and a run continued on another
    corpus would be neither run."""
    data = config.get("data") or {}
    return {"dataset": data.get("dataset"), "vocab_size": data.get("vocab_size")}


def first_difference(saved: Any, wanted: Any, where: str = "", ignore: frozenset[str] = frozenset()) -> str | None:
    """``"model.d_model=64 there, 128 now"`` for the first setting that differs, None when equal;
    settings named in ``ignore`` (dotted paths) may differ."""
    if isinstance(saved, dict) and isinstance(wanted, dict):
        for key in [*saved, *(k for k in wanted if k not in saved)]:
            path = f"{where}.{key}" if where else key
            found = None if path in ignore else first_difference(saved.get(key), wanted.get(key), path, ignore)
            if found:
                return found
        return None
    return None if saved == wanted else f"{where or 'spec'}={_shown(saved)} there, {_shown(wanted)} now"


SHOWN_CHARS = 60
"""How much of a differing value the one-line refusal quotes: a whole spec would run to a thousand characters."""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS - 3]}..."


def run_to_continue(settings: RunSettings) -> Path | str | None:
    """The unfinished run this command continues per ``settings.resume``, None for a new run (and
    without monitoring). It only reads, so a ``--resume`` mistake is refused before anything is made."""
    if not settings.monitoring.enabled:
        if settings.resume == "must":
            raise ConfigError("--resume must needs monitoring (checkpoints on disk); drop --no-monitoring")
        return None
    existing = None if settings.resume == "never" else find_unfinished_run(settings)
    if existing is None and settings.resume == "must":
        raise ConfigError(f"--resume must: no unfinished run named {settings.name!r} in {settings.output}")
    if isinstance(existing, Path):
        _require_subfolders(existing)
    return existing


def _require_subfolders(run_dir: Path) -> None:
    """Refuse, before Ray starts, a run folder in which something that is not a folder took the place of
    one of the run's own (the monitoring actor would die on it once the workers are up)."""
    for name in RUN_SUBFOLDERS:
        path = run_dir / name
        if path.exists() and not path.is_dir():
            raise ConfigError(f"the unfinished run {run_dir} has a file where its {name!r} folder belongs; "
                              "move that file away to continue the run, or pass --resume never to start a new one")


def new_run_dir(settings: RunSettings) -> Path | str | None:
    """A new run folder under a fresh id (a URI at a storage output), None without monitoring."""
    if not settings.monitoring.enabled:
        return None
    if is_uri(settings.output):
        return claim_run_location(settings.output, settings.name)
    exp_id = generate_experiment_id(settings.name, settings.output)
    return Path(create_experiment_directory(settings.output, exp_id)["root"])


DRIVER_LOCK = ".driver.lock"
"""The file in a local run folder that the driver training it holds locked (``flock``): the kernel
lets go of it when that process ends, however it ends."""


@contextlib.contextmanager
def sole_driver(run_dir: Path | str | None) -> Iterator[None]:
    """Hold the run folder for this driver; ConfigError while another live command trains it.

    The same command run twice would otherwise find the first one's unfinished run and train it a
    second time beside it, both writing one folder. A folder at a URI has no lock (object stores
    offer none); one without monitoring has no folder.
    """
    if run_dir is None or is_uri(str(run_dir)):
        yield
        return
    with open(Path(run_dir) / DRIVER_LOCK, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise ConfigError(f"the run {run_dir} is being trained by another command ({lock.read().strip()}); "
                              "let it finish, or pass --resume never (or another --name) for a new run") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}")
        lock.flush()
        yield


def remove_if_never_started(run_dir: Path | str | None) -> None:
    """Remove a local run folder that an interrupted start left without config.json (written as
    training begins) and without a checkpoint: no rerun could find it, and ``ls`` hides it."""
    if run_dir is None or is_uri(str(run_dir)) or (Path(run_dir) / "config.json").exists():
        return
    if not any(Path(run_dir).glob("checkpoints/checkpoint_step_*.pt")):
        shutil.rmtree(run_dir, ignore_errors=True)
