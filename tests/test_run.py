"""Real Ray Train runs of the tiny model on CPU workers: DDP, worker kill and exact resume, outcomes."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from runs import TWO_WORKER_STEPS, final_weights, run_settings

from orchestrator.monitor import MONITOR_NICENESS, RunMonitor
from orchestrator.monitoring import CheckpointManager, MetricsLogger
from orchestrator.run import _fit_with_progress, _outcome, fit_failure, run_training, train_experiment, with_worker_cpus
from orchestrator.run_folder import (
    first_difference,
    new_run_dir,
    remove_if_never_started,
    run_to_continue,
    sole_driver,
)
from orchestrator.settings import MonitoringSettings, default_cpus_per_worker
from orchestrator.snapshot import snapshot
from orchestrator.wire import to_wire
from spectral_gpt.config import ConfigError


def test_two_worker_run_killed_mid_way_ends_exactly_like_an_uninterrupted_one(two_worker_reference, token_cache,
                                                                              tmp_path):
    steps, reference = TWO_WORKER_STEPS, two_worker_reference

    killed: list[int] = []

    def kill_rank1_after_first_checkpoint(progress: dict) -> None:
        if not killed and progress.get("checkpoint_step", 0) >= 10 and 1 in progress.get("workers", {}):
            pid = progress["workers"][1]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    outcome = run_training(run_settings(tmp_path, token_cache, "killed", workers=2, steps=steps),
                           on_progress=kill_rank1_after_first_checkpoint, poll_seconds=0.05)
    assert killed, "the run ended before a checkpoint was committed"
    assert outcome.status == "completed", outcome.error

    attempts = json.loads((outcome.run_dir / "logs" / "attempts.json").read_text())["attempts"]
    restart = attempts[-1]
    assert restart["attempt"] == 2 and 10 < restart["start_step"] < steps

    rows = MetricsLogger(outcome.run_dir / "logs").load_metrics()
    ref_rows = MetricsLogger(reference.run_dir / "logs").load_metrics()
    assert [r["step"] for r in rows] == list(range(steps))
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref_rows]  # atol = 0
    assert {r["attempt"] for r in rows if r["step"] >= restart["start_step"]} == {2}
    assert {r["attempt"] for r in rows if r["step"] < restart["start_step"]} == {1}

    ref_weights, weights = final_weights(reference.run_dir), final_weights(outcome.run_dir)
    assert ref_weights.keys() == weights.keys()
    assert all(torch.equal(ref_weights[k], weights[k]) for k in weights)
    assert outcome.final_metrics["val_loss"] == reference.final_metrics["val_loss"]


def test_without_monitoring_a_killed_rank_0_resumes_from_the_checkpoint_the_actor_kept(two_worker_reference,
                                                                                       token_cache, tmp_path):
    """No files: the actor keeps the newest checkpoint in memory, and the restarted group continues
    from it to the uninterrupted run's result. What the actor keeps are views of object-store arrays
    that rank 0, the worker killed here, owns: Ray keeps them mapped while the actor holds them."""
    killed_at: list[int] = []
    restarts: list[int] = []

    def kill_rank0_after_a_checkpoint(progress: dict) -> None:
        if not killed_at and progress.get("checkpoint_step", 0) >= 10 and 0 in progress.get("workers", {}):
            os.kill(progress["workers"][0], signal.SIGKILL)
            killed_at.append(progress["checkpoint_step"])
        elif progress.get("attempt") == 2:
            restarts.append(progress["start_step"])

    quiet = MonitoringSettings(enabled=False, checkpoint_interval=10, log_interval=1, viz_interval=1000)
    outcome = run_training(run_settings(tmp_path, token_cache, "memory", workers=2, steps=TWO_WORKER_STEPS,
                                        monitoring=quiet), on_progress=kill_rank0_after_a_checkpoint, poll_seconds=0.05)
    assert killed_at, "the run ended before a checkpoint was kept"
    assert outcome.status == "completed", outcome.error
    assert outcome.run_dir is None and not list(tmp_path.iterdir())
    assert restarts and restarts[-1] > killed_at[0] >= 10  # from the kept checkpoint, not from step 0
    assert outcome.final_metrics["val_loss"] == two_worker_reference.final_metrics["val_loss"]


def _thread_niceness(pid: int) -> set[int]:
    """The nice values of every thread of ``pid`` (field 19 of ``/proc/<pid>/task/<tid>/stat``)."""
    values = set()
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            values.add(int(stat.read_text().rsplit(")", 1)[1].split()[16]))
        except FileNotFoundError:  # a thread (or the process) that ended since the glob
            continue
    return values


def test_a_run_whose_monitoring_actor_is_killed_writes_the_seed_layout_and_a_completed_result(ray_session,
                                                                                               token_cache, tmp_path):
    """The monitoring actor is SIGKILLed after the first checkpoint: Ray restarts it, training goes on,
    and the run folder is the seed's, complete: every row, the plots, the checkpoints, the result.
    (One run for both, since each run costs a Ray worker group.)"""
    steps = 40  # 30 steps past the first checkpoint, where the actor is killed
    killed: list[int] = []
    niceness: dict[int, set[int]] = {}

    def kill_monitor_after_first_checkpoint(progress: dict) -> None:
        niceness.setdefault(progress["monitor_pid"], set()).update(_thread_niceness(progress["monitor_pid"]))
        if not killed and progress.get("checkpoint_step", 0) >= 10:
            os.kill(progress["monitor_pid"], signal.SIGKILL)
            killed.append(progress["monitor_pid"])

    settings = run_settings(tmp_path, token_cache, "layout", ablation="full_physics", steps=steps, cpus_per_worker=2,
                            monitoring=MonitoringSettings(checkpoint_interval=10, log_interval=1, viz_interval=20))
    outcome = run_training(settings, on_progress=kill_monitor_after_first_checkpoint, poll_seconds=0.05)
    assert killed, "the run ended before a checkpoint was committed"
    assert outcome.status == "completed", outcome.error
    run_dir = outcome.run_dir
    assert run_dir.name.startswith("layout_")
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed"
    assert results["final_metrics"]["total_steps"] == steps
    assert results["final_metrics"]["torch_threads"] == 2, "the worker's 2 CPUs did not become torch threads"
    assert Path(results["best_checkpoint"]).is_file()
    assert results["generation_samples"][0].startswith("The theory of quantum mechanics suggests")
    config = json.loads((run_dir / "config.json").read_text())
    assert config["config"]["spec"]["experiment"]["name"] == "full_physics"
    assert config["hardware"]["cpu_count"] >= 1
    rows = MetricsLogger(run_dir / "logs").load_metrics()
    assert [r["step"] for r in rows] == list(range(steps))  # none lost to the dead actor
    assert all("coherence_loss" in r and "wave_ratio" in r for r in rows)
    for plot in ("training_dynamics", "frequencies", "phases", "harmonics", "wave_packets"):
        for step in (20, steps - 1):  # the last step's plots are drawn in the background, and finished
            assert (run_dir / "visualizations" / f"{plot}_step_{step}.png").stat().st_size > 0
    assert {c["step"] for c in CheckpointManager(run_dir).list_checkpoints()} >= {30, steps - 1}
    assert CheckpointManager(run_dir).load_latest_checkpoint()["state"]["step"] == steps
    # The actor and its restarted process yield the CPU to training, every thread of them.
    assert len(niceness) == 2 and all(values == {MONITOR_NICENESS} for values in niceness.values()), niceness


def test_train_experiment_without_monitoring_writes_nothing(ray_session, token_cache, tmp_path, monkeypatch):
    """The quick-run mode (the seed's ``enable_monitoring=False``, the CLI's ``--no-monitoring``): a completed
    run, no output folder, not even the default one in the working folder, and its temporary Ray Train
    storage removed."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.chdir(tmp_path)
    outcome = train_experiment("standard_transformer", "tiny", 20, experiment_dir=tmp_path / "quiet",
                               enable_monitoring=False, cache_dir=token_cache, batch_size=8)
    assert outcome.status == "completed", outcome.error
    assert outcome.run_dir is None
    assert outcome.final_metrics["total_steps"] == 20
    # The worker's CPUs were left to the driver: all of the session instance's 2 but one.
    assert outcome.final_metrics["torch_threads"] == default_cpus_per_worker(2, 1) == 1
    undecided = run_settings(tmp_path, token_cache, "undecided")
    assert undecided.scaling.cpus_per_worker is None
    assert with_worker_cpus(undecided).scaling.cpus_per_worker == 1  # decided from the instance, not left to Ray
    assert outcome.generation_samples and outcome.final_metrics["val_loss"] > 0
    assert not (tmp_path / "quiet").exists() and not (tmp_path / "experiments").exists()
    assert not list(scratch.glob("spectral-gpt-*")), "the temporary Ray storage was left behind"


def test_the_monitoring_schedule_and_that_without_monitoring_no_weights_are_sent_for_plots():
    """Rows, checkpoints and plots at their intervals, at validations, new bests and the end; without
    monitoring, checkpoints still go to the actor's memory (resume), but no weights for plots."""
    on = MonitoringSettings(checkpoint_interval=10, log_interval=5, viz_interval=15)
    off = dataclasses.replace(on, enabled=False)
    steps = range(27)
    for mon in (on, off):
        assert [s for s in steps if mon.row_due(s, evaluated=s == 7, last=s == 26)] == [0, 5, 7, 10, 15, 20, 25, 26]
        assert [s for s in steps if mon.checkpoint_due(s, improved=s == 13, last=s == 26)] == [10, 13, 20, 26]
    assert [s for s in steps if on.plots_due(s, last=s == 26)] == [15, 26]
    assert not any(off.plots_due(s, last=s == 26) for s in steps)


def test_without_monitoring_a_restarted_actor_keeps_the_checkpoints_of_the_attempt_training(tmp_path, token_cache):
    """Ray restarts a dead monitoring actor by running its constructor again; with no files to read
    the attempt back from, it takes it from rank 0's next call, so the saves after the restart are kept
    for a worker failure to resume from, while a superseded attempt's calls are still dropped."""
    settings = run_settings(tmp_path, token_cache, "memory").to_dict()
    state = to_wire(snapshot({"step": 20, "weights": torch.arange(6.0)}))
    first = RunMonitor(None, settings, {"train_tokens": 1})
    attempt = first.begin_attempt(0, {})
    restarted = RunMonitor(None, settings, {"train_tokens": 1})  # what Ray's restart runs
    assert restarted.latest_state() is None
    restarted.log(attempt, [{"step": 20, "loss": 4.0}])
    assert restarted.save_checkpoint(attempt, 20, state, None)
    assert restarted.get_progress()["step"] == 20 and restarted.get_progress()["checkpoint_step"] == 20
    assert torch.equal(restarted.latest_state()["weights"], torch.arange(6.0))
    newer = restarted.begin_attempt(21, {})  # the worker group restarted
    assert newer > attempt and not restarted.save_checkpoint(attempt, 30, state, None)
    assert restarted.latest_state()["step"] == 20


def test_a_save_that_ray_retries_after_its_commit_leaves_the_committed_file_alone(tmp_path, token_cache):
    """The actor can die between committing a checkpoint and answering; Ray then restarts it and runs the
    call again. Rewriting the file would leave it out of step with the manifest's sha256 until the new
    commit, so the retry keeps the sound file; a committed file that no longer verifies is written again."""
    settings = run_settings(tmp_path, token_cache, "retried")
    run_dir = new_run_dir(settings)
    state = to_wire(snapshot({"step": 20, "weights": torch.arange(6.0)}))
    first = RunMonitor(str(run_dir), settings.to_dict(), {"train_tokens": 1})
    attempt = first.begin_attempt(0, {})
    assert first.save_checkpoint(attempt, 20, state, 3.0)
    path = CheckpointManager(run_dir).latest_checkpoint()
    committed = path.stat()
    restarted = RunMonitor(str(run_dir), settings.to_dict(), {"train_tokens": 1})  # what Ray's restart runs
    assert restarted.save_checkpoint(attempt, 20, state, 3.0)
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (committed.st_ino, committed.st_mtime_ns)
    assert restarted.get_progress()["checkpoint_step"] == 20
    with open(path, "r+b") as fh:  # bit rot in the committed file
        fh.seek(-1, os.SEEK_END)
        last = fh.read(1)
        fh.seek(-1, os.SEEK_END)
        fh.write(bytes([last[0] ^ 1]))
    assert restarted.save_checkpoint(attempt, 20, state, 3.0)
    assert path.stat().st_ino != committed.st_ino
    assert torch.equal(CheckpointManager(run_dir).load_checkpoint(20)["state"]["weights"], torch.arange(6.0))


def test_a_monitoring_actor_that_could_not_start_fails_the_run_with_its_reason_in_one_line(ray_session, tmp_path):
    class UnstartableMonitor:  # defined here so that Ray ships it by value to the actor's process
        """Fails as RunMonitor's constructor does when its staging copy cannot be downloaded (a full
        disk): Ray never restarts an actor whose creation task raised."""

        def __init__(self) -> None:
            raise OSError(28, "No space left on device")

        def get_final(self) -> None:
            return None

        def get_progress(self) -> dict:
            return {}

    actor = ray_session.remote(max_restarts=-1)(UnstartableMonitor).remote()
    outcome = _outcome(actor, tmp_path, None)
    assert (outcome.status, outcome.run_dir) == ("failed", tmp_path)
    assert outcome.error == ("the run's monitoring actor died "
                             "(it could not start: OSError: [Errno 28] No space left on device)")


def test_an_interrupted_api_call_stops_its_training_and_gives_its_cpus_back(ray_session, token_cache, tmp_path):
    """A notebook's "interrupt kernel" reaches the driver's polling loop, not Train's fit thread: the run
    must stop there and then, not train on in the background holding the CPUs the next call needs."""
    settings = run_settings(tmp_path, token_cache, "interrupted", steps=100_000,
                            monitoring=MonitoringSettings(enabled=False))
    # Retried without end, the workers would never give up by themselves once their monitor is gone.
    settings = dataclasses.replace(settings, scaling=dataclasses.replace(settings.scaling, max_failures=-1))

    def interrupt_once_training(progress: dict) -> None:
        if progress.get("step", 0) >= 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_training(settings, on_progress=interrupt_once_training)
    total = ray_session.cluster_resources()["CPU"]
    deadline = time.monotonic() + 20
    while ray_session.available_resources().get("CPU", 0) < total and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray_session.available_resources().get("CPU", 0) == total
    assert {pg["state"] for pg in ray_session.util.placement_group_table().values()} <= {"REMOVED"}


def test_a_run_that_used_up_its_restarts_says_so_in_one_line_with_what_to_do():
    """Ray's own message runs to twenty lines of worker metadata and boilerplate; these are the two
    kinds of worker failure it carries (a killed process, an exception in the training loop)."""
    from ray.train import WorkerGroupError
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback

    killed = RuntimeError("A worker health check failed.\nWorker info: Worker(actor=..., log_file_path=...)\n"
                          "The worker may have exited unexpectedly due to SIGSEGV or other system errors.")
    raised = UserExceptionWithTraceback(ValueError("bad batch"), 'Traceback (most recent call last):\n'
                                        '  File "worker.py", line 9, in loop\nValueError: bad batch\n')
    error = WorkerGroupError("[Rank 0 Error Snippet]:\n...\n[Rank 1 Error Snippet]:\n...", {1: raised, 0: killed})
    assert fit_failure(error, 2, resumable=True) == (
        "workers kept failing, more than --max-failures 2 restarts allow (rank 0: A worker health check failed.; "
        "rank 1: ValueError: bad batch); the same command run again continues from the last checkpoint")
    assert fit_failure(error, 0, resumable=False).endswith("; with monitoring off nothing is kept to continue from")
    assert fit_failure(RuntimeError("controller\ngone"), 2, resumable=True) == "training failed: controller"


def test_a_start_interrupted_before_training_leaves_no_run_folder_but_a_started_run_keeps_its_own(tmp_path,
                                                                                                   token_cache):
    """Ctrl-C while Ray starts: the new folder has Ray Train's storage marker and empty subfolders but
    no config.json, which rank 0 writes as training begins; a rerun could never find it."""
    settings = run_settings(tmp_path, token_cache, "early")
    never, started, checkpointed = (new_run_dir(settings) for _ in range(3))
    for run_dir in (never, started, checkpointed):
        (run_dir / ".ray" / "invocation_1").mkdir(parents=True)
        (run_dir / ".ray" / "invocation_1" / ".validate_storage_marker").touch()
    (started / "config.json").write_text("{}")
    CheckpointManager(checkpointed).save_checkpoint(10, state={"w": torch.ones(1)})
    for run_dir in (never, started, checkpointed):
        remove_if_never_started(run_dir)
    assert not never.exists() and started.is_dir() and checkpointed.is_dir()


@pytest.mark.parametrize("subfolder", ["checkpoints", "logs", "visualizations"])
def test_a_run_to_continue_with_a_file_in_place_of_its_folder_is_refused_before_ray(subfolder, tmp_path,
                                                                                   token_cache):
    """Found before Ray starts, instead of the monitoring actor dying on it once the workers are up."""
    settings = run_settings(tmp_path, token_cache, "clobbered")
    run_dir = new_run_dir(settings)
    (run_dir / "config.json").write_text(json.dumps({"config": settings.to_dict()}))
    (run_dir / subfolder).rmdir()
    (run_dir / subfolder).write_text("not a folder")
    with pytest.raises(ConfigError) as error:
        run_to_continue(settings)
    assert str(error.value) == (f"the unfinished run {run_dir} has a file where its {subfolder!r} folder belongs; "
                                "move that file away to continue the run, or pass --resume never to start a new one")
    assert run_to_continue(dataclasses.replace(settings, resume="never")) is None


def test_a_saved_spec_of_another_shape_is_refused_in_a_short_line(tmp_path, token_cache):
    """A hand-edited config.json whose spec is not a dict: the refusal quotes the start of each side, not the
    whole spec (it ran to 1,214 characters)."""
    settings = run_settings(tmp_path, token_cache, "reshaped")
    run_dir = new_run_dir(settings)
    (run_dir / "config.json").write_text(json.dumps({"config": {**settings.to_dict(), "spec": "edited"}}))
    with pytest.raises(ConfigError) as error:
        run_to_continue(settings)
    assert "was started with other settings (spec='edited' there, {'model': {" in str(error.value)
    assert len(str(error.value).replace(str(run_dir), "")) < 250
    assert first_difference({"a": 1}, {"a": 2}) == "a=1 there, 2 now"


def test_the_same_command_run_while_its_run_still_trains_is_refused_before_ray(tmp_path, token_cache):
    """The second command would find the first one's unfinished run and train it a second time beside
    it; the first driver's lock (held here, as that process would) refuses it, and is gone with it."""
    settings = run_settings(tmp_path, token_cache, "twice")
    run_dir = new_run_dir(settings)
    (run_dir / "config.json").write_text(json.dumps({"config": settings.to_dict()}))  # what training begins with
    with sole_driver(run_dir):
        with pytest.raises(ConfigError, match=rf"the run {run_dir} is being trained by another command "
                                              rf"\(pid {os.getpid()} on "):
            run_training(settings)
    with sole_driver(run_to_continue(settings)):  # the first driver ended: the run is free again
        assert (run_dir / "config.json").exists()


def test_a_monitoring_actor_that_stops_answering_is_said_once_and_not_sent_a_queue_of_questions(ray_session,
                                                                                                 caplog):
    """A long upload holds the actor's answers (it answers one call at a time): the driver says so once
    instead of showing a bar that just stopped. The trainer is a stand-in whose fit takes 2 s."""
    class SlowMonitor:  # defined here so that Ray ships it by value to the actor's process
        def __init__(self) -> None:
            self.asked = 0

        def get_progress(self) -> dict:
            self.asked += 1
            if self.asked == 2:
                time.sleep(1.5)  # an upload in progress
            return {"step": self.asked}

    monitor = ray_session.remote(SlowMonitor).remote()
    assert ray_session.get(monitor.get_progress.remote()) == {"step": 1}  # the actor is up
    seen: list[dict] = []
    trainer = SimpleNamespace(fit=lambda: time.sleep(2.5))
    with caplog.at_level("WARNING", logger="orchestrator.run"):
        assert _fit_with_progress(trainer, monitor, seen.append, poll_seconds=0.05, silence_s=0.5) is None
    assert [r.getMessage() for r in caplog.records] == [
        "the monitoring actor has not answered for 0.5 s (a slow or stuck upload or disk?); "
        "training waits for it at its next checkpoint"]
    assert seen[:2] == [{"step": 2}, {"step": 3}]  # no questions queued behind the slow answer


def test_divergence_fails_the_run_with_a_clear_message(ray_session, token_cache, tmp_path):
    settings = run_settings(tmp_path, token_cache, "diverge", steps=40, lr=1e12, warmup_steps=0)
    outcome = run_training(settings)
    assert outcome.status == "failed"
    assert "training diverged at step" in outcome.error
    results = json.loads((outcome.run_dir / "results.json").read_text())
    assert results["status"] == "failed"
    assert "training diverged" in results["error"]


def test_resume_must_without_a_run_is_a_config_error(token_cache, tmp_path):
    settings = run_settings(tmp_path, token_cache, "nothing", resume="must")
    with pytest.raises(ConfigError, match="no unfinished run named 'nothing'"):
        run_training(settings)
    assert not (tmp_path / "nothing").exists()


def test_a_restarted_monitor_keeps_the_warnings_of_its_run(tmp_path, token_cache):
    """Ray restarts a dead actor by running its constructor again with the same arguments: the
    warnings since the driver started the run come back from training.log, older ones do not."""
    settings = run_settings(tmp_path, token_cache, "warned")
    run_dir = new_run_dir(settings)
    earlier = RunMonitor(str(run_dir), settings.to_dict(), {"train_tokens": 1})
    earlier._warn("checkpoint at step 10 not saved (disk full) -- an earlier driver's")
    started_at = time.time() + 1.0  # the next whole second: warnings-since is to the second
    time.sleep(max(0.0, started_at - time.time()))
    first = RunMonitor(str(run_dir), settings.to_dict(), {"train_tokens": 1}, started_at=started_at)
    assert first.warnings == []
    first._warn("checkpoint at step 20 not saved (disk full)")
    first._warn("checkpoint at step 30 not saved (disk full)")
    restarted = RunMonitor(str(run_dir), settings.to_dict(), {"train_tokens": 1}, started_at=started_at)
    assert restarted.warnings == ["checkpoint at step 20 not saved (disk full)",
                                  "checkpoint at step 30 not saved (disk full)"]
    restarted.finish("completed", {"total_steps": 60})
    assert json.loads((run_dir / "results.json").read_text())["warnings"] == restarted.warnings


def test_the_progress_stamps_each_attempts_first_row(tmp_path, token_cache):
    """What recovery_time measures to: the first row of an attempt is stamped once, a later row keeps
    the stamp, and the next attempt (a restarted group) stamps its own."""
    monitor = RunMonitor(None, run_settings(tmp_path, token_cache, "stamps").to_dict(), {"train_tokens": 1})
    row = {"loss": 4.0, "ce_loss": 4.0}
    attempt = monitor.begin_attempt(0, {})
    assert "attempt_first_row_at" not in monitor.get_progress()
    before = time.time()
    monitor.log(attempt, [{"step": 0, **row}])
    first = monitor.get_progress()["attempt_first_row_at"]
    monitor.log(attempt, [{"step": 1, **row}])
    assert before <= first == monitor.get_progress()["attempt_first_row_at"]
    attempt = monitor.begin_attempt(2, {})
    assert "attempt_first_row_at" not in monitor.get_progress()
    monitor.log(attempt, [{"step": 2, **row}])
    assert monitor.get_progress()["attempt_first_row_at"] >= first
