"""Tier 2: a worker node dies mid-run, a replacement joins, and the run ends exactly like an uninterrupted one.

The scenario (tests/multinode_scenario.py) starts a ``ray.cluster_utils.Cluster`` with a head of its
own, which this test session's local Ray rules out in-process, so it runs as a subprocess in a new
session: a private RAY_TMPDIR keeps its address file and sockets away from every other Ray on the
machine, and afterwards exactly the processes of that session are stopped. The uninterrupted
reference is the session's (``two_worker_reference``), trained on its local Ray.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from runs import final_weights, kill_until_gone, run_settings, session_pids

from orchestrator.monitoring import MetricsLogger

SCENARIO = Path(__file__).with_name("multinode_scenario.py")
FAST_NODE_DEATH = {"RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "3"}
"""The GCS declares a silent node dead after ~1.5 s instead of ~15 s (5 missed checks 3 s apart):
the same recovery path, sooner (README, "Resume and fault tolerance", has both timings)."""


def _stop_session(session: int) -> list[int]:
    """SIGKILL whatever of the scenario's session outlived it; returns what still runs after 20 s."""
    return kill_until_gone(lambda: session_pids(session))


def _run_scenario(tmp_path: Path, token_cache: str) -> dict:
    """Run the scenario to its end, stop what is left of its cluster, return its JSON result."""
    ray_tmp = tempfile.mkdtemp(prefix="sgmn-", dir="/tmp")  # short: AF_UNIX paths are limited
    result, log = tmp_path / "result.json", tmp_path / "scenario.log"
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, **FAST_NODE_DEATH}
    with log.open("w") as out:  # a file, not a pipe: a stray Ray process holding a pipe would block us
        scenario = subprocess.Popen([sys.executable, str(SCENARIO), str(tmp_path / "runs"), token_cache, str(result)],
                                    env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        scenario.wait(timeout=400)
    finally:
        scenario.kill()
        scenario.wait()
        leftover = _stop_session(scenario.pid)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert scenario.returncode == 0, log.read_text()[-4000:]
    assert not leftover, f"processes of the test cluster survived: {leftover}"
    return json.loads(result.read_text())


def test_a_lost_node_is_replaced_and_the_run_ends_exactly_like_an_uninterrupted_one(two_worker_reference,
                                                                                     token_cache, tmp_path):
    reference = two_worker_reference
    result = _run_scenario(tmp_path, token_cache)
    faulted = result["outcome"]
    assert faulted["status"] == "completed", faulted["error"]

    where = result["placement"]
    lost = where["lost_rank"]
    assert where["first_attempt"] == {str(lost): "node-1", str(1 - lost): "head"}  # spread over both nodes
    assert where["monitor"] == "head"
    assert sorted(where["second_attempt"].values()) == ["head", "replacement"]  # ranks may swap nodes
    when = result["timeline"]
    assert when["node_killed"] < when["group_torn_down"] <= when["replacement_added"] < when["resumed"]

    run_dir = Path(faulted["run_dir"])
    attempts = json.loads((run_dir / "logs" / "attempts.json").read_text())["attempts"]
    [(attempt, restart)] = [(a["attempt"], a["start_step"]) for a in attempts]
    # Resumed from a checkpoint committed before the group went down: the one seen when the kill was
    # ordered, or a later one the surviving rank committed while the node was still being torn down.
    interval = run_settings(tmp_path, token_cache, "x").monitoring.checkpoint_interval
    assert attempt == 2 and restart - 1 >= where["checkpoint_step_at_loss"] and (restart - 1) % interval == 0

    steps = reference.final_metrics["total_steps"]
    rows = MetricsLogger(run_dir / "logs").load_metrics()
    ref_rows = MetricsLogger(reference.run_dir / "logs").load_metrics()
    assert [r["step"] for r in rows] == list(range(steps))
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref_rows]  # atol = 0
    assert [r["attempt"] for r in rows] == [1] * restart + [2] * (steps - restart)  # replayed rows hidden

    ref_weights, weights = final_weights(reference.run_dir), final_weights(run_dir)
    assert ref_weights.keys() == weights.keys()
    assert all(torch.equal(ref_weights[k], weights[k]) for k in weights)
    assert faulted["val_loss"] == reference.final_metrics["val_loss"]
