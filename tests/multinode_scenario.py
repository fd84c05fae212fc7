"""A worker node of a two-node Ray cluster dies mid-run: the scenario tests/test_multinode.py runs.

It needs a Ray head of its own (the test session already runs one local Ray), hence a fresh process;
the caller gives it a private RAY_TMPDIR. Each node has 1 CPU, so the two training workers sit on
different nodes: one on the head (with the driver, Train's controller and our monitoring actor), one
on the worker node. It trains a 2-worker run and SIGKILLs every process of the worker node once the
first checkpoint is committed, then adds a replacement node once Ray has torn the broken worker group
down and marked the node dead. What the test asserts on, and the times it took, are written as JSON;
the test compares the run with the session's uninterrupted one of the same settings
(``two_worker_reference`` in tests/conftest.py).

Usage: python tests/multinode_scenario.py OUTPUT_DIR TOKEN_CACHE RESULT_JSON
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray._private import ray_constants
from ray._private.node import Node
from ray.cluster_utils import Cluster
from runs import TWO_WORKER_STEPS, run_settings

from orchestrator.run import run_training

FAULT_AFTER_CHECKPOINT = 10
NODE_ARGS = {"num_cpus": 1, "object_store_memory": 100 * 1024**2}

for _key, _value in {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "RAY_USAGE_STATS_ENABLED": "0",
                     "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}.items():  # as in tests/conftest.py
    os.environ.setdefault(_key, _value)


def _raylet_pid(node: Node) -> int:
    return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid


def _parent_pid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class NodeLoss:
    """The run's on_progress callback: kill the worker node, later add a replacement, note the times.

    A Ray worker process is a child of its node's raylet, which is how a pid is mapped to a node.
    """

    cluster: Cluster
    names: dict[int, str]
    """raylet pid -> node name."""
    timeline: dict[str, float] = field(default_factory=dict)
    placement: dict[str, Any] = field(default_factory=dict)
    lost: Node | None = None
    survivor: int = 0
    first_pids: dict[int, int] = field(default_factory=dict)

    def node_of(self, pid: int) -> str:
        """The name of the node whose raylet started ``pid``."""
        return self.names.get(_parent_pid(pid), "unknown")

    def __call__(self, progress: dict[str, Any]) -> None:
        workers = progress.get("workers", {})
        if self.lost is None:
            if progress.get("checkpoint_step", 0) >= FAULT_AFTER_CHECKPOINT and len(workers) == 2:
                self._kill_node(progress, workers)
            return
        now = time.time()
        if "group_torn_down" not in self.timeline and not _alive(self.survivor):
            self.timeline["group_torn_down"] = now
        if "node_marked_dead" not in self.timeline and not any(
                n["Alive"] for n in ray.nodes() if n["NodeID"] == self.lost.node_id):
            self.timeline["node_marked_dead"] = now
        if "replacement_added" not in self.timeline and {"group_torn_down", "node_marked_dead"} <= set(self.timeline):
            self.names[_raylet_pid(self.cluster.add_node(**NODE_ARGS))] = "replacement"
            self.timeline["replacement_added"] = time.time()
        if "resumed" not in self.timeline and progress.get("attempt", 0) >= 2 and len(workers) == 2 \
                and all(workers[rank] != pid for rank, pid in self.first_pids.items()):
            self.timeline["resumed"] = progress["attempt_started"]
            self.placement["second_attempt"] = {rank: self.node_of(pid) for rank, pid in workers.items()}

    def _kill_node(self, progress: dict[str, Any], workers: dict[int, int]) -> None:
        (self.lost,) = self.cluster.worker_nodes
        raylet = _raylet_pid(self.lost)
        lost_rank = next(rank for rank, pid in workers.items() if _parent_pid(pid) == raylet)
        self.first_pids, self.survivor = dict(workers), workers[1 - lost_rank]
        self.placement.update(
            first_attempt={rank: self.node_of(pid) for rank, pid in workers.items()}, lost_rank=lost_rank,
            monitor=self.node_of(progress["monitor_pid"]), lost_node=self.names[raylet],
            checkpoint_step_at_loss=progress["checkpoint_step"], step_at_loss=progress["step"])
        self.timeline["node_killed"] = time.time()
        self.cluster.remove_node(self.lost, allow_graceful=False)  # a crash: SIGKILL, no goodbye


def main(output: Path, cache: str, result_path: Path) -> None:
    """Start the cluster, train with a node loss, write the JSON, stop the cluster."""
    started = time.time()
    cluster = Cluster(initialize_head=True, head_node_args={**NODE_ARGS, "include_dashboard": False})
    try:
        names = {_raylet_pid(cluster.head_node): "head", _raylet_pid(cluster.add_node(**NODE_ARGS)): "node-1"}
        ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.WARNING)
        cluster_up = time.time()
        fault = NodeLoss(cluster, names)
        settings = run_settings(output, cache, "node_lost", workers=2, steps=TWO_WORKER_STEPS)
        run = run_training(settings, on_progress=fault, poll_seconds=0.05)
        outcome = {"status": run.status, "error": run.error, "run_dir": str(run.run_dir),
                   "val_loss": run.final_metrics.get("val_loss")}
        seconds = {"cluster_start": cluster_up - started, "run": time.time() - cluster_up}
        result_path.write_text(json.dumps({"outcome": outcome, "placement": fault.placement,
                                           "timeline": fault.timeline, "seconds": seconds}, indent=1))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
