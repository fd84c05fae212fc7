"""Shared fixtures: one token cache and one local Ray instance per test session (spec/ray.md §11)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Short commit window for reported results in tests; Train forwards RAY_TRAIN_* vars to its workers.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
# What connect_ray sets for the local instances it starts (the test session's is started here).
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


@pytest.fixture(scope="session")
def token_cache(tmp_path_factory):
    """A token cache shared by every test that trains on the offline corpus."""
    from spectral_gpt.data import TokenDataset

    cache = tmp_path_factory.mktemp("token-cache")
    TokenDataset.prepare("python-docs", cache, 1024)
    return str(cache)


@pytest.fixture(scope="session")
def ray_session():
    """A private local Ray instance (never one started by `ray start` elsewhere on the machine)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 1024**2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def two_worker_reference(ray_session, token_cache, tmp_path_factory):
    """An uninterrupted 2-worker run: what every faulted 2-worker run must equal, step for step."""
    from runs import TWO_WORKER_STEPS, run_settings

    from orchestrator.run import run_training

    outcome = run_training(run_settings(tmp_path_factory.mktemp("reference"), token_cache, "reference",
                                        workers=2, steps=TWO_WORKER_STEPS))
    assert outcome.status == "completed", outcome.error
    return outcome


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    """A private, short Ray temp dir for a driver process (Unix socket paths must stay < 107 bytes, so
    not tmp_path). Ray creates ``<dir>/ray/session_*`` when it starts; an empty dir proves it never did."""
    path = Path(tempfile.mkdtemp(prefix="sgpt-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sessions() -> Iterator[list[int]]:
    """Session ids of the drivers a test starts; anything still alive in them is killed at teardown."""
    from runs import kill_until_gone, session_pids

    started: list[int] = []
    yield started
    for sid in started:
        kill_until_gone(lambda sid=sid: session_pids(sid))
