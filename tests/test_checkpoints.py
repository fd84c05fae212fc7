"""CheckpointManager on real files: seed contract, retention, crash safety, corruption, failing disks."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from orchestrator.monitoring import CheckpointManager, atomic
from orchestrator.monitoring.checkpoints import checkpoint_file_name

REPO = Path(__file__).resolve().parents[1]


def _state(step: int) -> dict:
    return {"weights": torch.full((8,), float(step)), "step": step, "nested": {"lr": 1e-3, "hist": [1, 2]}}


def _saved_steps(manager: CheckpointManager) -> list[int]:
    return [c["step"] for c in manager.list_checkpoints()]


def _step_files(manager: CheckpointManager) -> set[int]:
    files = manager.checkpoint_dir.glob("checkpoint_step_*.pt")
    return {int(p.name[len("checkpoint_step_"):-len(".pt")]) for p in files}


def test_should_checkpoint_follows_the_seed_cadence(tmp_path):
    manager = CheckpointManager(tmp_path, save_interval=100)
    assert [s for s in (0, 50, 100, 150, 200) if manager.should_checkpoint(s)] == [100, 200]


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_keep_last_n_below_one_is_refused_naming_it(tmp_path, bad):
    with pytest.raises(ValueError, match="keep_last_n"):
        CheckpointManager(tmp_path, keep_last_n=bad)


def test_seed_positional_form_round_trips_model_and_optimizer(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 5)).pow(2).sum().backward()
    optimizer.step()
    manager = CheckpointManager(tmp_path, save_interval=100)

    path = manager.save_checkpoint(100, model, optimizer, [3.0, 2.5], {"experiment_name": "x", "step": 100})

    assert path == tmp_path / "checkpoints" / "checkpoint_step_100.pt" and path.is_file()
    assert manager.latest_pointer.resolve() == path.resolve()
    ckpt = manager.load_checkpoint(step=100)
    assert {"step", "model_state_dict", "optimizer_state_dict", "loss_history", "config",
            "timestamp", "git_hash"} <= set(ckpt)
    assert ckpt["step"] == 100 and ckpt["loss_history"] == [3.0, 2.5]
    assert ckpt["config"] == {"experiment_name": "x", "step": 100}
    fresh = torch.nn.Linear(5, 3)
    fresh.load_state_dict(ckpt["model_state_dict"])
    assert torch.equal(fresh.weight, model.weight) and torch.equal(fresh.bias, model.bias)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    fresh_opt.load_state_dict(ckpt["optimizer_state_dict"])
    moments = [o.state_dict()["state"][0]["exp_avg"] for o in (fresh_opt, optimizer)]
    assert torch.equal(*moments)
    info = manager.list_checkpoints()[0]
    assert {"step", "path", "size_mb", "modified", "val_loss", "is_best"} <= set(info)
    assert "checkpoint_step_100.pt" in info["path"] and info["size_mb"] > 0


def test_complete_train_state_resumes_exactly(tmp_path):
    from spectral_gpt import training
    from spectral_gpt.config import TrainConfig, get_ablation, model_config_for

    spec = training.RunSpec(model_config_for("tiny", "full_physics", vocab_size=64),
                            get_ablation("full_physics"), TrainConfig(steps=10))
    state = training.TrainState(spec)
    state.step, state.tokens_seen = 7, 1234
    manager = CheckpointManager(tmp_path)
    assert manager.save_checkpoint(7, state=state.state_dict(), config=spec.to_dict(), val_loss=4.2)

    restored = training.TrainState(spec)
    with torch.no_grad():
        for p in restored.model.parameters():
            p.add_(1.0)
    ckpt = manager.load_latest_checkpoint()
    restored.load_state_dict(ckpt["state"])
    assert ckpt["val_loss"] == pytest.approx(4.2) and restored.step == 7 and restored.tokens_seen == 1234
    saved, loaded = state.model.state_dict(), restored.model.state_dict()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)


def test_retention_keeps_last_three_and_the_best_and_survives_a_restart(tmp_path):
    val_losses = [5.0, 4.0, 3.0, 2.5, 2.6, 2.7, 2.8, 2.9, 3.0, 3.1]
    manager = CheckpointManager(tmp_path, save_interval=100, keep_last_n=3)
    for i, val in enumerate(val_losses):
        step = 100 * (i + 1)
        assert manager.save_checkpoint(step, state=_state(step), val_loss=val) is not None
        seen = list(zip(range(100, step + 1, 100), val_losses[: i + 1], strict=True))
        best = min(seen, key=lambda sv: (sv[1], sv[0]))[0]
        expected = sorted({s for s, _ in seen[-3:]} | {best})
        assert _saved_steps(manager) == expected
        assert _step_files(manager) == set(expected)

    assert _saved_steps(manager) == [400, 800, 900, 1000]
    manifest = json.loads(manager.manifest_path.read_text())
    assert manifest["best_step"] == 400
    assert [e["step"] for e in manifest["checkpoints"]] == [400, 800, 900, 1000]
    assert all(len(e["sha256"]) == 64 for e in manifest["checkpoints"])

    restarted = CheckpointManager(tmp_path, save_interval=100, keep_last_n=3)
    assert _saved_steps(restarted) == [400, 800, 900, 1000]
    assert restarted.best_checkpoint() == tmp_path / "checkpoints" / "checkpoint_step_400.pt"
    assert [c["is_best"] for c in restarted.list_checkpoints()] == [True, False, False, False]
    assert restarted.load_latest_checkpoint()["step"] == 1000

    restarted.save_checkpoint(1100, state=_state(1100), val_loss=2.0)
    assert _saved_steps(restarted) == [900, 1000, 1100]
    assert restarted.best_checkpoint().name == "checkpoint_step_1100.pt"


def test_best_ties_go_to_the_earliest_and_nonfinite_never_wins(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last_n=1)
    for step, val in [(1, 2.0), (2, float("nan")), (3, 2.0), (4, None)]:
        manager.save_checkpoint(step, state=_state(step), val_loss=val)
    assert _saved_steps(manager) == [1, 4]
    assert manager.best_checkpoint().name == "checkpoint_step_1.pt"


def test_no_validation_loss_means_no_best(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last_n=2)
    for step in (1, 2, 3):
        manager.save_checkpoint(step, state=_state(step))
    assert manager.best_checkpoint() is None and _saved_steps(manager) == [2, 3]
    assert manager.latest_checkpoint().name == "checkpoint_step_3.pt"


def test_saving_an_earlier_step_supersedes_the_abandoned_later_ones(tmp_path, caplog):
    manager = CheckpointManager(tmp_path, keep_last_n=5)
    for step in (1, 2, 3, 4):
        manager.save_checkpoint(step, state=_state(step), val_loss=1.0 / step)
    with caplog.at_level(logging.WARNING):
        manager.save_checkpoint(3, state=_state(30))
    assert "supersedes" in caplog.text
    assert _saved_steps(manager) == [1, 2, 3] and _step_files(manager) == {1, 2, 3}
    assert manager.load_latest_checkpoint()["state"]["weights"][0].item() == 30.0


@pytest.mark.parametrize("damage", ["flip_byte", "truncate"])
def test_corrupt_newest_checkpoint_is_detected_and_the_previous_one_used(tmp_path, caplog, damage):
    manager = CheckpointManager(tmp_path, keep_last_n=3)
    for step in (10, 20, 30):
        manager.save_checkpoint(step, state=_state(step))
    newest = tmp_path / "checkpoints" / checkpoint_file_name(30)
    data = bytearray(newest.read_bytes())
    if damage == "flip_byte":
        data[len(data) // 2] ^= 0x01
    else:
        del data[len(data) // 2:]
    newest.write_bytes(bytes(data))

    with caplog.at_level(logging.WARNING):
        ckpt = CheckpointManager(tmp_path, keep_last_n=3).load_latest_checkpoint()
    assert ckpt["step"] == 20 and torch.equal(ckpt["state"]["weights"], torch.full((8,), 20.0))
    assert "sha256 mismatch" in caplog.text and "checkpoint_step_30.pt" in caplog.text
    assert manager.load_checkpoint(step=30) is None


def test_files_missing_from_disk_are_dropped_with_a_warning(tmp_path, caplog):
    manager = CheckpointManager(tmp_path, keep_last_n=3)
    for step in (1, 2, 3):
        manager.save_checkpoint(step, state=_state(step))
    (tmp_path / "checkpoints" / checkpoint_file_name(3)).unlink()
    with caplog.at_level(logging.WARNING):
        reopened = CheckpointManager(tmp_path, keep_last_n=3)
    assert "missing on disk" in caplog.text
    assert _saved_steps(reopened) == [1, 2] and reopened.load_latest_checkpoint()["step"] == 2


def test_folder_without_manifest_is_adopted(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last_n=3)
    for step in (5, 6):
        manager.save_checkpoint(step, state=_state(step))
    manager.manifest_path.unlink()
    legacy = CheckpointManager(tmp_path, keep_last_n=3)
    assert _saved_steps(legacy) == [5, 6] and legacy.load_latest_checkpoint()["step"] == 6


@pytest.mark.parametrize("manifest", ["[]", '{"checkpoints": 5}', '"text"'])
def test_a_manifest_of_the_wrong_shape_is_read_as_unreadable_and_the_files_adopted(manifest, tmp_path, caplog):
    """Valid JSON that is no manifest (hand-edited, another program's) made the monitoring actor die
    with an AttributeError at resume; it is a warning, like a manifest that does not parse."""
    manager = CheckpointManager(tmp_path, keep_last_n=3)
    for step in (5, 6):
        manager.save_checkpoint(step, state=_state(step))
    manager.manifest_path.write_text(manifest)
    with caplog.at_level(logging.WARNING):
        reopened = CheckpointManager(tmp_path, keep_last_n=3)
    assert "holds no list of checkpoints; using the files on disk" in caplog.text
    assert _saved_steps(reopened) == [5, 6] and reopened.load_latest_checkpoint()["step"] == 6


def test_stale_temp_files_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = atomic.temp_path_for(ckpt_dir / "x").name.split(atomic.TEMP_MARK)[1].split("-")[0]
    stale = ckpt_dir / f"checkpoint_step_9.pt{atomic.TEMP_MARK}{host}-{dead.pid}-abcd"
    live = ckpt_dir / f"checkpoint_step_8.pt{atomic.TEMP_MARK}{host}-{os.getppid()}-abcd"
    stale.write_bytes(b"partial")
    live.write_bytes(b"partial")
    manager = CheckpointManager(tmp_path)
    assert not stale.exists() and live.exists()
    assert manager.list_checkpoints() == []


def test_unloadable_payload_fails_at_save_not_at_resume(tmp_path):
    import numpy as np

    manager = CheckpointManager(tmp_path)
    with pytest.raises(TypeError, match=r"payload\['state'\]\['rng'\]"):
        manager.save_checkpoint(1, state={"rng": np.zeros(3)})
    assert manager.list_checkpoints() == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_write_failure_is_a_warning_and_the_next_save_succeeds(tmp_path, monkeypatch, caplog, code):
    manager = CheckpointManager(tmp_path, keep_last_n=2)
    manager.save_checkpoint(1, state=_state(1))

    def refuse(path, mode):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(atomic, "open_output", refuse)
    with caplog.at_level(logging.WARNING):
        assert manager.save_checkpoint(2, state=_state(2)) is None
    assert "not saved" in caplog.text and os.strerror(code) in caplog.text
    assert _saved_steps(manager) == [1] and _step_files(manager) == {1}
    assert not list(manager.checkpoint_dir.glob(f"*{atomic.TEMP_MARK}*"))

    monkeypatch.undo()
    assert manager.save_checkpoint(3, state=_state(3)) is not None
    assert _saved_steps(manager) == [1, 3] and manager.load_latest_checkpoint()["step"] == 3


def test_a_commit_that_fails_after_its_manifest_was_replaced_keeps_the_checkpoint_it_lists(tmp_path, monkeypatch):
    """The folder's fsync after the manifest's rename can fail: the save is reported as not saved, but
    the manifest already lists the new file and dropped the older one, so the file must stay."""
    manager = CheckpointManager(tmp_path, keep_last_n=1)
    manager.save_checkpoint(1, state=_state(1))
    real = atomic.fsync_dir

    def fail_after_the_manifest(directory):
        real(directory)
        if manager.manifest_path.exists() and '"step": 2' in manager.manifest_path.read_text():
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(directory))

    monkeypatch.setattr(atomic, "fsync_dir", fail_after_the_manifest)
    assert manager.save_checkpoint(2, state=_state(2)) is None
    monkeypatch.undo()
    assert _saved_steps(manager) == [2] and manager.load_latest_checkpoint()["step"] == 2


_SLOW_SAVER = textwrap.dedent("""
    import sys, torch
    from orchestrator.monitoring import CheckpointManager
    manager = CheckpointManager(sys.argv[1], keep_last_n=2)
    manager.save_checkpoint(1, state={"w": torch.full((4,), 1.0)}, val_loss=1.0)
    big = torch.ones(50_000_000)  # 200 MB: the save takes long enough to be killed mid-write
    step = 2
    while True:
        state = {"w": torch.full((4,), float(step)), "big": big}
        manager.save_checkpoint(step, state=state, val_loss=1.0 / step)
        step += 1
""")


def test_sigkill_during_a_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    child = subprocess.Popen([sys.executable, "-c", _SLOW_SAVER, str(tmp_path)], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    manifest = ckpt_dir / "manifest.json"
    try:
        while not (manifest.exists() and list(ckpt_dir.glob(f"checkpoint_step_*.pt{atomic.TEMP_MARK}*"))):
            assert child.poll() is None, child.stdout.read().decode()
            assert time.monotonic() < deadline, "the child never started a large save"
            time.sleep(0.001)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert list(ckpt_dir.glob(f"checkpoint_step_*.pt{atomic.TEMP_MARK}*")), "killed after the save ended"

    manager = CheckpointManager(tmp_path, keep_last_n=2)
    assert not list(ckpt_dir.glob(f"*{atomic.TEMP_MARK}*")), "the dead writer's temp file was not cleaned"
    committed = _saved_steps(manager)
    assert committed and committed[0] == 1
    for path in ckpt_dir.glob("checkpoint_step_*.pt"):
        torch.load(path, map_location="cpu", weights_only=True)  # no half file under a final name
    latest = manager.load_latest_checkpoint()
    assert latest["step"] == committed[-1]
    assert torch.equal(latest["state"]["w"], torch.full((4,), float(committed[-1])))
