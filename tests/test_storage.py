"""Runs at storage URIs: checked output values, a mirrored run folder that stays consistent, resume.

No network here, so the "bucket" is always local: a ``file://`` URI (pyarrow's own local file system)
or fsspec's LocalFileSystem behind ``PyFileSystem(FSSpecHandler(...))``, the route every fsspec
storage (s3fs, gcsfs, adlfs) takes. The one stand-in is ``FlakyBucket``: an fsspec handler that
refuses some uploads, as a cloud bucket does when the network drops mid-sync.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import fsspec
import pytest
import torch
from pyarrow.fs import FSSpecHandler, PyFileSystem

import orchestrator.storage
from orchestrator.cli import main
from orchestrator.mirror import RunMirror, default_staging_root
from orchestrator.monitor import RunMonitor
from orchestrator.monitoring import CheckpointManager, ConfigTracker, MetricsLogger
from orchestrator.monitoring.checkpoints import MANIFEST_NAME
from orchestrator.run import run_training
from orchestrator.run_folder import find_unfinished_run, new_run_dir
from orchestrator.settings import MonitoringSettings, RunSettings, ScalingSettings, build_run_settings
from orchestrator.storage import (
    LOOKUP_RETRY_LIMIT_S,
    check_output,
    claim_run_location,
    list_run_folders,
    normalize_output,
    open_filesystem,
    ray_train_storage,
)
from spectral_gpt.config import ConfigError
from spectral_gpt.data import BatchSampler, TokenDataset
from spectral_gpt.training import TrainState, train_step


@pytest.fixture
def staging_in_tmp(tmp_path, monkeypatch):
    """Staging copies made in this process (not in a Ray actor, whose env is fixed) go under the test's folder."""
    monkeypatch.setenv("SPECTRAL_GPT_STAGING", str(tmp_path / "staging"))


def _uri(path: Path) -> str:
    return f"file://{path}"


# -- 1. what --output accepts ------------------------------------------------------------------------

@pytest.mark.parametrize(("given", "canonical"), [
    ("s3://bucket/runs/", "s3://bucket/runs"),
    ("S3://bucket/runs?region=eu-west-1", "s3://bucket/runs?region=eu-west-1"),
    ("gs://bucket", "gs://bucket"),
    ("abfs://container@account.dfs.core.windows.net/runs", "abfs://container@account.dfs.core.windows.net/runs"),
    ("file:///mnt/shared/runs/", "file:///mnt/shared/runs"),
])
def test_storage_uris_are_accepted_without_touching_the_network(given, canonical):
    assert normalize_output(given) == canonical


@pytest.mark.parametrize(("given", "message"), [
    ("ftp://host/runs", "unknown storage scheme 'ftp://'"),
    ("s3://", "names no bucket or host after 's3://'"),
    ("file://host/runs", "a file:// URI needs an absolute path and no host"),
    ("file:///", "a file:// URI needs an absolute path"),
    ("s3://bucket:port/runs", "is not a valid URI"),
    ("gs://bucket/runs#x", "'#' fragment"),
    ("s3://bucket/a/../b", "contains '..'"),
    ("az://container/runs", "needs the fsspec file system for az://"),  # adlfs is not installed here
])
def test_unusable_outputs_are_one_line_config_errors(given, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        normalize_output(given)
    assert "\n" not in str(info.value) and given.split("://")[0].lower() in str(info.value).lower()


@pytest.mark.parametrize("given", ["s3://AKIAEXAMPLE:hunter2@bucket/runs", "s3://bucket/runs?secret_key=hunter2"])
def test_a_credential_in_the_uri_is_refused_without_being_echoed(given):
    with pytest.raises(ConfigError, match="carries a credential") as info:
        check_output(given)
    assert "hunter2" not in str(info.value) and "bucket" in str(info.value)


def test_settings_keep_a_uri_and_still_make_local_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    remote = build_run_settings(steps=20, output="gs://bucket/runs/", cache_dir=str(tmp_path))
    assert remote.output == "gs://bucket/runs"
    assert RunSettings.from_dict(json.loads(json.dumps(remote.to_dict()))) == remote
    assert build_run_settings(steps=20, output="relative/out").output == str(tmp_path / "relative" / "out")
    assert ray_train_storage("s3://bucket/runs/r1") == ("s3://bucket/runs/r1/.ray", None)
    assert ray_train_storage("/abs/r1") == ("/abs/r1/.ray", None)


@pytest.mark.parametrize("output", ["ftp://host/runs", "s3://AKIAEXAMPLE:hunter2@bucket/runs"])
def test_cli_exits_2_with_one_line_and_creates_nothing(output, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["train", "--steps", "5", "--output", output])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("spectral-gpt: error: output=") and "\n" not in err and "hunter2" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_sweep_at_a_uri_is_refused_with_the_alternative(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["ablate", "--experiment", "wave_baseline", "--steps", "5", "--output", "s3://bucket/sweeps"])
    assert info.value.code == 2
    assert "storage URIs work for single runs" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# -- 2. the mirror: a remote run folder that is consistent after every sync -------------------------

class FlakyBucket(FSSpecHandler):
    """fsspec's local file system that refuses uploads of matching files while ``down`` (a network cut)."""

    def __init__(self, refuse: str) -> None:
        super().__init__(fsspec.filesystem("file"))
        self.refuse = refuse
        self.down = True
        self.while_uploading: Callable[[], None] | None = None
        """Runs once, as the next upload of a matching file starts: what another thread does meanwhile."""

    def open_output_stream(self, path, metadata):
        if self.down and self.refuse in path:
            raise OSError(f"simulated upload failure for {path}")
        if self.while_uploading is not None and self.refuse in path:
            meanwhile, self.while_uploading = self.while_uploading, None
            meanwhile()
        return super().open_output_stream(path, metadata)


def _remote_manifest_steps(remote: Path) -> list[int]:
    return [e["step"] for e in json.loads((remote / "checkpoints" / MANIFEST_NAME).read_text())["checkpoints"]]


def _remote_checkpoint_files(remote: Path) -> set[str]:
    return {p.name for p in (remote / "checkpoints").iterdir()}


def test_mirror_uploads_in_commit_order_and_a_failed_upload_never_commits_remotely(tmp_path):
    remote = tmp_path / "bucket" / "run_1"
    bucket = FlakyBucket(refuse="checkpoint_step_30")
    mirror = RunMirror(_uri(remote), PyFileSystem(bucket), str(remote), tmp_path / "stage" / "run_1")
    mirror.staging.mkdir(parents=True)
    checkpoints = CheckpointManager(mirror.staging, keep_last_n=1)
    metrics = MetricsLogger(mirror.staging / "logs", log_interval=1)
    ConfigTracker(mirror.staging).save_config({"name": "run"})

    for step in (10, 20):
        metrics.log_metrics(step, {"loss": 1.0 / step})
        checkpoints.save_checkpoint(step, state={"w": torch.full((3,), float(step))})
        assert mirror.sync()
    # Retention deleted step 10 locally; the remote let it go too, after the manifest moved on.
    assert _remote_manifest_steps(remote) == [20]
    assert _remote_checkpoint_files(remote) == {"checkpoint_step_20.pt", MANIFEST_NAME}  # no symlink, no temp
    assert (remote / "config.json").is_file() and len((remote / "logs" / "metrics.jsonl").read_text().splitlines()) == 2

    checkpoints.save_checkpoint(30, state={"w": torch.full((3,), 30.0)})
    assert not mirror.sync()  # the checkpoint did not go up, so neither did the manifest naming it
    assert _remote_manifest_steps(remote) == [20]
    assert _remote_checkpoint_files(remote) == {"checkpoint_step_20.pt", MANIFEST_NAME}
    weights = torch.load(remote / "checkpoints" / "checkpoint_step_20.pt", weights_only=True)
    assert torch.equal(weights["state"]["w"], torch.full((3,), 20.0))

    bucket.down = False
    assert mirror.sync()
    assert _remote_manifest_steps(remote) == [30]
    assert _remote_checkpoint_files(remote) == {"checkpoint_step_30.pt", MANIFEST_NAME}

    # A new staging copy (an actor on another node) downloads a run whose latest checkpoint loads.
    other = RunMirror(_uri(remote), PyFileSystem(FSSpecHandler(fsspec.filesystem("file"))), str(remote),
                      tmp_path / "elsewhere" / "run_1")
    assert other.download() >= 5
    assert CheckpointManager(other.staging).load_latest_checkpoint()["state"]["w"][0].item() == 30.0
    assert [r["step"] for r in MetricsLogger(other.staging / "logs").load_metrics()] == [10, 20]
    before = {p: p.stat().st_mtime_ns for p in remote.rglob("*")}
    assert other.sync() and {p: p.stat().st_mtime_ns for p in remote.rglob("*")} == before  # nothing re-sent


def test_a_manifest_goes_up_only_with_what_it_lists_and_no_sync_deletes_a_run_it_has_no_copy_of(tmp_path):
    """The plot thread syncs while the actor thread commits: a checkpoint committed during an upload
    (retention letting the previous one go) waits for the next sync, manifest and deletions alike. A
    staging copy that is gone (released, or swept from /tmp) deletes nothing remote."""
    remote = tmp_path / "bucket" / "run_1"
    bucket = FlakyBucket(refuse="checkpoint_step_20")
    bucket.down = False
    mirror = RunMirror(_uri(remote), PyFileSystem(bucket), str(remote), tmp_path / "stage" / "run_1")
    mirror.staging.mkdir(parents=True)
    checkpoints = CheckpointManager(mirror.staging, keep_last_n=1)
    checkpoints.save_checkpoint(10, state={"w": torch.full((3,), 10.0)})
    assert mirror.sync()

    checkpoints.save_checkpoint(20, state={"w": torch.full((3,), 20.0)})
    bucket.while_uploading = lambda: checkpoints.save_checkpoint(30, state={"w": torch.full((3,), 30.0)})
    assert not mirror.sync() and mirror.last_error is None  # nothing failed: step 30's own sync follows
    assert _remote_manifest_steps(remote) == [10]
    assert CheckpointManager(remote).load_latest_checkpoint()["state"]["w"][0].item() == 10.0
    assert mirror.sync()
    assert _remote_manifest_steps(remote) == [30]
    assert _remote_checkpoint_files(remote) == {"checkpoint_step_30.pt", MANIFEST_NAME}

    uploaded = sorted(p.relative_to(remote) for p in remote.rglob("*"))
    shutil.rmtree(mirror.staging)
    assert not mirror.sync() and "is missing" in mirror.last_error
    assert mirror.staging.mkdir(parents=True) is None and mirror.release()
    assert mirror.sync()  # a plot thread's sync after the release: nothing to send, nothing to delete
    assert sorted(p.relative_to(remote) for p in remote.rglob("*")) == uploaded


def test_a_kept_staging_copy_that_is_ahead_goes_up_before_a_new_actor_replaces_it(tmp_path):
    """An actor whose uploads failed to the end keeps its staging copy; the next actor of the run on that
    node (the same command run again, a Ray restart) uploads it first instead of deleting that work."""
    remote = tmp_path / "bucket" / "run_1"
    remote.mkdir(parents=True)
    first = RunMirror.attach(_uri(remote), tmp_path / "staging")
    checkpoints = CheckpointManager(first.staging, keep_last_n=2)
    checkpoints.save_checkpoint(10, state={"w": torch.full((3,), 10.0)})
    assert first.sync()
    first.filesystem = PyFileSystem(FlakyBucket(refuse="/"))  # the credentials expire
    checkpoints.save_checkpoint(20, state={"w": torch.full((3,), 20.0)})
    ConfigTracker(first.staging).save_results({"total_steps": 20}, status="completed")
    assert not first.release() and first.staging.is_dir()

    with pytest.raises(OSError, match="holds work that .* lacks and it could not be uploaded"):
        RunMirror.attach(_uri(remote), tmp_path / "staging", filesystem=PyFileSystem(FlakyBucket(refuse="/")))
    assert (first.staging / "results.json").is_file()
    again = RunMirror.attach(_uri(remote), tmp_path / "staging")  # the network is back
    assert again.staging == first.staging
    assert _remote_manifest_steps(remote) == [10, 20] and (remote / "results.json").is_file()
    assert CheckpointManager(again.staging).load_latest_checkpoint()["state"]["w"][0].item() == 20.0


def test_an_upload_that_fails_is_a_warning_of_the_run_and_its_release_keeps_the_staging_copy(tmp_path,
                                                                                              staging_in_tmp):
    settings = _uri_settings(tmp_path, str(tmp_path / "cache"), "cut", steps=30, resume="never")
    location = new_run_dir(settings)
    monitor = RunMonitor(location, settings.to_dict(), {"train_tokens": 1})
    attempt = monitor.begin_attempt(0, {"gpu_count": 0})
    monitor.mirror.filesystem = PyFileSystem(FlakyBucket(refuse="results.json"))  # credentials expire at the end
    assert monitor.save_checkpoint(attempt, 10, {"step": 10, "w": torch.ones(2)}, val_loss=4.0)
    assert monitor.get_progress()["warnings"] == []
    monitor.finish("completed", {"total_steps": 30})
    [warning] = monitor.get_progress()["warnings"]
    assert warning.startswith(f"run folder not fully uploaded to {location} (simulated upload failure")
    assert not monitor.release() and (monitor.mirror.staging / "results.json").is_file()
    assert not (Path(location.removeprefix("file://")) / "results.json").exists()


# -- 3. the monitoring actor's class and the driver's resume lookup on a file:// URI ----------------

def _uri_settings(tmp_path: Path, cache: str, name: str, steps: int, **kw) -> RunSettings:
    return build_run_settings(
        steps=steps, batch_size=8, name=name, output=_uri(tmp_path / "bucket"), cache_dir=cache, eval_interval=20,
        monitoring=MonitoringSettings(checkpoint_interval=10, log_interval=1, viz_interval=1000),
        scaling=ScalingSettings(workers=1, max_failures=2), **kw)


def test_monitor_at_a_uri_survives_its_own_restart_and_ends_with_remote_results(tmp_path, staging_in_tmp):
    settings = _uri_settings(tmp_path, str(tmp_path / "cache"), "mon", steps=30, resume="never")
    location = new_run_dir(settings)
    assert isinstance(location, str) and location.startswith(_uri(tmp_path / "bucket") + "/mon_")
    remote = Path(location.removeprefix("file://"))

    first = RunMonitor(location, settings.to_dict(), {"train_tokens": 1})
    attempt = first.begin_attempt(0, {"gpu_count": 0})
    first.log(attempt, [{"step": s, "loss": 5.0 - s / 10} for s in range(11)])
    assert first.save_checkpoint(attempt, 10, {"step": 10, "w": torch.ones(2)}, val_loss=4.0)
    assert json.loads((remote / "config.json").read_text())["config"]["output"] == settings.output

    # Ray restarts a dead actor by running the constructor again: it rebuilds from the remote folder.
    second = RunMonitor(location, settings.to_dict(), {"train_tokens": 1})
    assert second.latest_state()["step"] == 10 and second.attempt == attempt
    second.finish("completed", {"total_steps": 30})
    results = json.loads((remote / "results.json").read_text())
    assert results["status"] == "completed"
    assert results["best_checkpoint"] == f"{location}/checkpoints/checkpoint_step_10.pt"
    assert second.release() and not second.mirror.staging.exists()
    assert [r["step"] for r in MetricsLogger(remote / "logs").load_metrics()] == list(range(11))


def _run_folder(path: Path, config: RunSettings, results: dict | None, age: int) -> None:
    """A run folder as a driver finds it: its settings, how it ended (None: it has not), its age in s."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"config": config.to_dict()}))
    if results is not None:
        (path / "results.json").write_text(json.dumps(results))
    os.utime(path / "config.json", (1e9 - age, 1e9 - age))


def test_resume_lookup_on_a_uri_picks_the_newest_unfinished_run_of_the_name(tmp_path):
    settings = _uri_settings(tmp_path, str(tmp_path / "cache"), "r", steps=40)
    bucket = tmp_path / "bucket"

    assert find_unfinished_run(settings) is None  # no bucket folder yet: no run
    _run_folder(bucket / "r_20260101_000000_abc", settings, {"status": "failed"}, age=30)
    _run_folder(bucket / "r_20260101_000001_abc", settings, None, age=20)
    _run_folder(bucket / "r_20260101_000002_abc", settings, {"status": "completed"}, age=10)
    other_name = _uri_settings(tmp_path, str(tmp_path / "cache"), "r_b", steps=40)
    _run_folder(bucket / "r_b_20260101_000003_abc", other_name, None, age=0)
    assert find_unfinished_run(settings) == _uri(bucket / "r_20260101_000001_abc")

    _run_folder(bucket / "r_20260101_000004_abc", _uri_settings(tmp_path, str(tmp_path / "cache"), "r", steps=99),
                None, age=5)
    with pytest.raises(ConfigError, match="was started with other settings"):
        find_unfinished_run(settings)


def test_the_drivers_lookup_of_a_gs_output_retries_for_seconds_not_minutes(monkeypatch):
    """With no network or no credentials the GCS client retried silently for minutes before Ray started.
    No bucket can be reached here: the lookups run against a stand-in that records what they open, and
    the real pyarrow file system of that URI is built (no request is made) to read its retry limit."""
    fs, path = open_filesystem(orchestrator.storage._for_lookup("gs://bucket/runs?project_id=p"))
    options = fs.__reduce__()[1][0]
    assert (path, options["project_id"]) == ("bucket/runs", "p")
    assert options["retry_time_limit"] == timedelta(seconds=LOOKUP_RETRY_LIMIT_S)

    opened = []

    def unreachable(location: str):
        opened.append(location)
        raise OSError("google::cloud::Status(UNAVAILABLE: Retry policy exhausted)")

    monkeypatch.setattr(orchestrator.storage, "open_filesystem", unreachable)
    with pytest.raises(ConfigError, match=r"output='gs://bucket/runs' cannot be read \(google::cloud::Status"):
        list_run_folders("gs://bucket/runs", "r_")
    with pytest.raises(ConfigError, match=r"output='gs://b/r\?retry_limit_seconds=60' cannot be written"):
        claim_run_location("gs://b/r?retry_limit_seconds=60", "r")  # the user's own limit is kept
    assert opened == [f"gs://bucket/runs?retry_limit_seconds={LOOKUP_RETRY_LIMIT_S}", "gs://b/r?retry_limit_seconds=60"]
    assert orchestrator.storage._for_lookup("gcs://b/r") == f"gcs://b/r?retry_limit_seconds={LOOKUP_RETRY_LIMIT_S}"
    assert orchestrator.storage._for_lookup("s3://b/r") == "s3://b/r"


def test_a_diverged_run_has_ended_so_a_rerun_with_a_lower_lr_starts_a_new_run(tmp_path):
    """A diverged run would diverge again if continued; its user reruns with other settings, which
    must not be refused as a changed unfinished run. A run the workers' deaths ended is continued."""
    cache = str(tmp_path / "cache")
    diverged = _uri_settings(tmp_path, cache, "r", steps=40, lr=1.0)
    _run_folder(tmp_path / "bucket" / "r_20260101_000000_abc", diverged, {
        "status": "failed", "final_metrics": {"total_steps": 7, "loss": float("nan")},
        "error": "training diverged at step 7: loss=nan, grad_norm=inf"}, age=10)
    assert find_unfinished_run(diverged) is None
    assert find_unfinished_run(_uri_settings(tmp_path, cache, "r", steps=40, lr=1e-3)) is None
    gave_up = tmp_path / "bucket" / "r_20260101_000001_abc"
    _run_folder(gave_up, diverged, {"status": "failed", "final_metrics": {}, "error": "max failures"}, age=5)
    assert find_unfinished_run(diverged) == _uri(gave_up)
    with pytest.raises(ConfigError, match=r"experiment\.lr=1\.0 there, 0\.001 now"):
        find_unfinished_run(_uri_settings(tmp_path, cache, "r", steps=40, lr=1e-3))


def test_a_run_started_eagerly_is_continued_under_compile_but_not_in_another_precision_or_corpus(tmp_path):
    """--compile changes how a step runs, not what it computes; --precision changes the numbers, and
    --dataset the run itself (the model and training settings do not say which corpus it learns)."""
    cache = str(tmp_path / "cache")
    started = tmp_path / "bucket" / "r_20260101_000000_abc"
    started.mkdir(parents=True)
    (started / "config.json").write_text(json.dumps(
        {"config": _uri_settings(tmp_path, cache, "r", steps=40).to_dict()}))
    compiled = _uri_settings(tmp_path, cache, "r", steps=40, compile_mode="max-autotune")
    assert find_unfinished_run(compiled) == _uri(started)
    with pytest.raises(ConfigError, match=r"train\.precision='fp32' there, 'bf16' now"):
        find_unfinished_run(_uri_settings(tmp_path, cache, "r", steps=40, precision="bf16"))
    with pytest.raises(ConfigError, match=r"data\.dataset='python-docs' there, 'shakespeare' now"):
        find_unfinished_run(_uri_settings(tmp_path, cache, "r", steps=40, dataset="shakespeare"))


# -- 4. a real Ray run that resumes an interrupted run from its file:// URI ---------------------------

def test_a_run_interrupted_at_a_uri_is_resumed_on_ray_from_the_remote_folder(ray_session, token_cache, tmp_path,
                                                                             monkeypatch):
    steps, interrupted_at = 30, 10
    actor_staging = default_staging_root()  # the actors' env was fixed when Ray started
    monkeypatch.setenv("SPECTRAL_GPT_STAGING", str(tmp_path / "dead-driver-staging"))
    settings = _uri_settings(tmp_path, token_cache, "remote", steps)

    # What a driver killed right after the checkpoint of step 10 leaves behind: its monitor's
    # uploads (real training steps, a real checkpoint) and no results.json.
    location = new_run_dir(settings)
    dataset = TokenDataset.prepare(settings.data.dataset, token_cache, settings.data.vocab_size)
    spec = settings.spec
    sampler = BatchSampler(dataset.train, spec.model.block_size, spec.train.batch_size, spec.train.seed)
    state = TrainState(spec)
    dead = RunMonitor(location, settings.to_dict(), dataset.info())
    attempt = dead.begin_attempt(0, {"gpu_count": 0})
    for _ in range(interrupted_at + 1):
        result = train_step(state, sampler.batch)
        dead.log(attempt, [{"step": result.step, "loss": result.loss}])
    assert dead.save_checkpoint(attempt, interrupted_at, state.state_dict(), val_loss=None)

    staged: list[Path] = []

    def look_for_the_actors_staging_copy(progress: dict) -> None:
        if not staged and progress.get("step", 0) > interrupted_at:
            staged.extend(actor_staging.glob("*/remote_*"))

    outcome = run_training(dataclasses.replace(settings, resume="must"), on_progress=look_for_the_actors_staging_copy,
                           poll_seconds=0.05)
    assert outcome.status == "completed", outcome.error
    assert outcome.run_dir == location and outcome.start_step == interrupted_at + 1
    remote = Path(location.removeprefix("file://"))
    assert [p.name for p in staged] == [remote.name] and not staged[0].exists()  # released at the end

    results = json.loads((remote / "results.json").read_text())
    assert results["status"] == "completed" and results["final_metrics"]["total_steps"] == steps
    assert results["best_checkpoint"].startswith(location + "/checkpoints/checkpoint_step_")
    assert json.loads((remote / "config.json").read_text())["config"]["output"] == _uri(tmp_path / "bucket")
    rows = MetricsLogger(remote / "logs").load_metrics()
    assert [r["step"] for r in rows] == list(range(steps))
    assert {r["attempt"] for r in rows if r["step"] > interrupted_at} == {2}
    assert (remote / "logs" / "metrics.parquet").stat().st_size > 0
    latest = max(CheckpointManager(remote).list_checkpoints(), key=lambda c: c["step"])
    payload = torch.load(latest["path"], map_location="cpu", weights_only=True)
    assert payload["step"] == steps - 1 and payload["state"]["step"] == steps
    assert (remote / "visualizations" / f"training_dynamics_step_{steps - 1}.png").stat().st_size > 0
