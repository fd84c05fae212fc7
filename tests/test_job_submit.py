"""Tier 2: `spectral-gpt train` submitted with `ray job submit` to a real `ray start --head` on loopback.

The test starts its own head node with a private temp dir and stops exactly the processes of that
cluster afterwards (never `ray stop`, which would kill every Ray instance on the machine).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cluster_pids(temp_dir: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if temp_dir in cmdline:
            pids.append(int(entry.name))
    return pids


@pytest.fixture
def head_node():
    """A `ray start --head` cluster on loopback, token auth on; yields its dashboard address."""
    temp_dir = tempfile.mkdtemp(prefix="sgray-", dir="/tmp")  # short: AF_UNIX paths are limited
    gcs, dashboard = _free_port(), _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([str(BIN / "ray"), "start", "--head", f"--port={gcs}", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dashboard}", "--num-cpus=2", f"--temp-dir={temp_dir}",
                    "--disable-usage-stats"], check=True, env=env, capture_output=True, timeout=120)
    try:
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        for pid in _cluster_pids(temp_dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.time() + 20
        while _cluster_pids(temp_dir) and time.time() < deadline:
            time.sleep(0.2)
        leftover = _cluster_pids(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not leftover, f"processes of the test cluster survived: {leftover}"


def test_ray_job_submit_runs_train_on_the_cluster(head_node, token_cache, tmp_path):
    output = tmp_path / "runs"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_ADDRESS": head_node}
    runtime_env = {"env_vars": {"SPECTRAL_GPT_CACHE": token_cache, "RAY_TRAIN_ENABLE_STATE_TRACKING": "1"}}
    submit = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--runtime-env-json", json.dumps(runtime_env), "--",
         sys.executable, "-m", "orchestrator.cli", "train", "--steps", "30", "--checkpoint-interval", "10",
         "--output", str(output), "--name", "jobrun"],
        env=env, capture_output=True, text=True, timeout=400)
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    assert "succeeded" in submit.stdout
    runs = list(output.glob("jobrun_*"))
    assert len(runs) == 1
    results = json.loads((runs[0] / "results.json").read_text())
    assert results["status"] == "completed"
    assert results["final_metrics"]["total_steps"] == 30
    assert (runs[0] / "logs" / "metrics.parquet").stat().st_size > 0
