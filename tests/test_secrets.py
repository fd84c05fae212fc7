"""Security: no secret reaches a run's files or its console; a checkpoint with a pickled object is refused.

The no-secret check needs a real ``spectral-gpt train`` process with secrets in its environment and
its ``--runtime-env``; it rides on tests/test_cli.py's killed-driver test (two real CLI runs, the
second resuming the first) instead of paying for a Ray start of its own. This module holds the
secrets and the search it uses.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import torch

from orchestrator.monitoring import CheckpointManager
from orchestrator.monitoring.checkpoints import checkpoint_file_name

SECRET_VARIABLES = ("RAY_AUTH_TOKEN", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN", "WANDB_API_KEY")
"""Variables a user's shell or a cluster commonly holds; RAY_AUTH_TOKEN is a real Ray setting (the
local cluster a driver starts takes it as its token)."""


def secret_environment() -> dict[str, str]:
    """A fresh sentinel value for each of :data:`SECRET_VARIABLES`."""
    return {name: f"sentinel-{name.lower()}-{uuid.uuid4().hex}" for name in SECRET_VARIABLES}


def secret_runtime_env(folder: Path) -> tuple[Path, str]:
    """A ``--runtime-env`` file carrying one more sentinel (as ``WANDB_API_KEY``) and
    ``OMP_NUM_THREADS=2``, which shows that Ray used the file: Ray itself gives a 1-CPU worker one
    thread, and a run records its worker's ``torch_threads``. Returns (file, sentinel)."""
    value = f"sentinel-runtime-env-{uuid.uuid4().hex}"
    path = folder / "runtime_env.yaml"
    path.write_text(f"env_vars:\n  OMP_NUM_THREADS: '2'\n  WANDB_API_KEY: {value}\n")
    return path, value


def assert_no_secret(folder: Path, outputs: list[bytes], values: list[str]) -> None:
    """No value appears in any byte of any file under ``folder`` (JSON, logs, Parquet, PNGs,
    checkpoints, Ray Train's ``.ray`` folder) nor in the captured console ``outputs``."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"config.json", "results.json", "metrics.jsonl", "training.log", "metrics.parquet"} <= names, names
    assert any(p.suffix == ".pt" for p in files) and any(p.suffix == ".png" for p in files)
    assert any(".ray" in p.parts for p in files), "Ray Train's storage folder was not searched"
    for value in values:
        needle = value.encode()
        assert not any(needle in output for output in outputs), f"{value} reached the console"
        leaks = [str(p) for p in files if needle in p.read_bytes()]
        assert leaks == [], f"{value} leaked into {leaks}"


class _RunsCode:
    """A pickled object that would run a shell command when unpickled by a full (unsafe) torch.load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_holding_a_pickled_object_is_refused_not_run(tmp_path):
    """Checkpoints load with ``weights_only=True``: a file that passes the sha256 check (an attacker
    who can write the folder can also rewrite the manifest) is still refused, and nothing runs."""
    manager = CheckpointManager(tmp_path, keep_last_n=3)
    for step in (1, 2):
        manager.save_checkpoint(step, state={"w": torch.full((4,), float(step))})
    marker = tmp_path / "pwned"
    evil = tmp_path / "checkpoints" / checkpoint_file_name(2)
    torch.save({"step": 2, "state": {"w": torch.zeros(4)}, "hook": _RunsCode(marker)}, evil)
    manifest = json.loads(manager.manifest_path.read_text())
    for entry in manifest["checkpoints"]:
        if entry["step"] == 2:
            entry["sha256"] = hashlib.sha256(evil.read_bytes()).hexdigest()
    manager.manifest_path.write_text(json.dumps(manifest))

    latest = manager.load_latest_checkpoint()
    assert latest["step"] == 1 and torch.equal(latest["state"]["w"], torch.full((4,), 1.0))
    assert not marker.exists(), "unpickling ran code"
    assert len(manager.last_warnings) == 1 and "could not be loaded (UnpicklingError" in manager.last_warnings[0]
    assert manager.load_checkpoint(2) is None and not marker.exists()
