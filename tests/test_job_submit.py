"""Tier 2: `spectral-gpt train` submitted with `ray job submit` to a real `ray start --head` on loopback.

The test starts its own head node, in a session of its own and with a private temp dir, and stops exactly
the processes of that cluster afterwards (never `ray stop`, which would kill every Ray instance on the machine).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from runs import actors_started, kill_until_gone, session_pids

BIN = Path(sys.executable).parent
STEPS = 100
"""5-10 s of training on 2 cores: many scrapes (four a second) of the metrics Ray exports every second."""
STATUS_EVERY_S = 30.0
"""How often ``ray job status`` is asked before the run has written its result (a job that fails early is
seen within this): each call is a Python process that imports Ray, CPU taken from the job it polls; the
metrics are scraped four times a second."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cluster_pids(temp_dir: str, session: int) -> list[int]:
    """The head's processes: its session (``ray start`` ran in a new one, and Ray's daemons and workers keep
    it), plus any that name its temp dir. The session is what finds the dashboard agent: it renames its
    command line (``ray::DashboardAgent``), and an orphan of it spins a core for about a minute."""
    pids = set(session_pids(session))
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if temp_dir in cmdline:
            pids.add(int(entry.name))
    return sorted(pids)


@pytest.fixture
def head_node():
    """A `ray start --head` cluster on loopback, token auth on.

    Yields its dashboard and metrics addresses and its temp dir (where its logs are)."""
    temp_dir = tempfile.mkdtemp(prefix="sgray-", dir="/tmp")  # short: AF_UNIX paths are limited
    gcs, dashboard, metrics, agent, agent_grpc = (_free_port() for _ in range(5))
    # Export metrics every second instead of every 10 s, so the test sees them while the job runs.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_metrics_report_interval_ms": "1000"}
    env.pop("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", None)  # a cluster as `ray start` makes it
    start = subprocess.Popen([str(BIN / "ray"), "start", "--head", f"--port={gcs}", "--dashboard-host=127.0.0.1",
                              f"--dashboard-port={dashboard}", f"--metrics-export-port={metrics}", "--num-cpus=2",
                              # Not the default agent ports: the test session's own Ray instance may hold them.
                              f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
                              f"--temp-dir={temp_dir}", "--disable-usage-stats"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        started = start.communicate(timeout=120)[0].decode(errors="replace")
        assert start.returncode == 0, f"ray start failed:\n{started[-3000:]}"
        yield f"http://127.0.0.1:{dashboard}", f"http://127.0.0.1:{metrics}/metrics", temp_dir
    finally:
        start.kill()  # only if `ray start` itself hung
        leftover = kill_until_gone(lambda: _cluster_pids(temp_dir, start.pid))
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not leftover, f"processes of the test cluster survived: {leftover}"


def _job(env: dict, *args: str) -> str:
    """Run `ray job ...`; a fresh head answers "No available agent" until its job agent is up, so wait for it."""
    deadline = time.time() + 90
    while True:
        done = subprocess.run([str(BIN / "ray"), "job", *args], env=env, capture_output=True, text=True, timeout=120)
        if done.returncode == 0 or "No available agent" not in done.stderr or time.time() > deadline:
            break
        time.sleep(1)
    assert done.returncode == 0, f"ray job {args[0]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done.stdout


def _our_series(metrics_url: str) -> list[str]:
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return []
    return [line for line in text.splitlines() if line.startswith("ray_spectral_gpt_")]


def test_ray_job_submit_runs_train_and_exports_dashboard_metrics(head_node, token_cache, tmp_path):
    dashboard, metrics_url, temp_dir = head_node
    output = tmp_path / "runs"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_ADDRESS": dashboard}
    runtime_env = {"env_vars": {"SPECTRAL_GPT_CACHE": token_cache}}
    _job(env, "submit", "--no-wait", "--submission-id", "sgjob", "--runtime-env-json", json.dumps(runtime_env),
         "--", sys.executable, "-m", "orchestrator.cli", "train", "--steps", str(STEPS), "--checkpoint-interval", "50",
         "--output", str(output), "--name", "jobrun")
    series: list[str] = []
    status, asked = "", time.time()  # the job has just been submitted: nothing to ask yet
    deadline = time.time() + 400
    while time.time() < deadline:
        series = series or [s for s in _our_series(metrics_url) if 'ablation="wave_baseline"' in s]
        if list(output.glob("jobrun_*/results.json")) or time.time() - asked > STATUS_EVERY_S:
            status, asked = _job(env, "status", "sgjob").lower(), time.time()
            if any(f"job 'sgjob' {word}" in status for word in ("succeeded", "failed", "stopped")):
                break
        time.sleep(0.25)
    assert "job 'sgjob' succeeded" in status, status + _job(env, "logs", "sgjob")[-3000:]

    runs = list(output.glob("jobrun_*"))
    assert len(runs) == 1
    results = json.loads((runs[0] / "results.json").read_text())
    assert results["status"] == "completed"
    assert results["final_metrics"]["total_steps"] == STEPS
    assert (runs[0] / "logs" / "metrics.parquet").stat().st_size > 0
    names = {line.split("{")[0] for line in series}
    assert {"ray_spectral_gpt_loss", "ray_spectral_gpt_step", "ray_spectral_gpt_tokens_per_sec"} <= names, series
    assert all(f'run="{runs[0].name}"' in line for line in series)
    # On a cluster Train keeps watching for drained (preempted) nodes; only a private local instance skips it.
    actors = actors_started(temp_dir)
    assert actors["PreemptionWatcher"] >= 1 and actors["DatasetManager"] == 0, actors
