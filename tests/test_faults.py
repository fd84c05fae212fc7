"""Failures injected into a real run (real Ray, the tiny model): a full disk, a kill, a corrupt checkpoint.

A checkpoint the disk refuses must not stop training: the monitoring actor records a warning (the
driver's progress and console, ``logs/training.log``, ``results.json["warnings"]``) and the next
save succeeds once there is space again. A newest checkpoint found corrupt at resume must be skipped
for the one before it, and the run must say so on the console and in its files.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cli import build_parser, main, settings_from_args
from orchestrator.config_file import parse_args
from orchestrator.monitoring import CheckpointManager, MetricsLogger
from orchestrator.run import run_training


class FullDisk:
    """Makes the folder a run writes its checkpoints to refuse writes, and gives the space back.

    Preferred: a real full file system. The folder becomes a 16 MiB tmpfs (``mount`` needs root or
    CAP_SYS_ADMIN, which this project's machines have), and :meth:`fill` writes a ballast file until
    the kernel answers ENOSPC. Fallback where ``mount`` is refused: a real per-process write limit,
    ``RLIMIT_FSIZE`` set on the monitoring actor's process with ``prlimit`` (Python ignores SIGXFSZ,
    so a write past the limit fails with EFBIG, "File too large"). Either way the actor's own
    ``write()`` calls fail in the kernel; nothing in the code under test is patched. ``mode`` says
    which path ran.
    """

    TMPFS_SIZE = "24m"
    FSIZE_LIMIT = 512 * 1024
    """Below one tiny-model checkpoint (~3 MB with optimiser state), above every other file it writes."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ballast = folder / "ballast.bin"
        mounted = False
        if not os.environ.get("SPECTRAL_GPT_TEST_NO_MOUNT"):  # set it to run the fallback on a root machine
            try:
                mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.TMPFS_SIZE}", "tmpfs",
                                          str(folder)], capture_output=True).returncode == 0
            except OSError:  # no mount command at all
                pass
        self.mode = "tmpfs" if mounted else "rlimit"
        self.refusal = os.strerror(errno.ENOSPC if self.mode == "tmpfs" else errno.EFBIG)
        self._limited_pid: int | None = None

    def fill(self, writer_pid: int) -> None:
        """From now on a checkpoint cannot be written."""
        if self.mode == "rlimit":
            _, hard = resource.prlimit(writer_pid, resource.RLIMIT_FSIZE)
            resource.prlimit(writer_pid, resource.RLIMIT_FSIZE, (self.FSIZE_LIMIT, hard))
            self._limited_pid = writer_pid
            return
        chunk = b"\0" * (1 << 16)
        with open(self.ballast, "wb") as fh:
            try:
                while True:
                    fh.write(chunk)
                    fh.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc

    def free(self) -> None:
        """Give the space back."""
        if self._limited_pid is not None:
            _, hard = resource.prlimit(self._limited_pid, resource.RLIMIT_FSIZE)
            resource.prlimit(self._limited_pid, resource.RLIMIT_FSIZE, (hard, hard))
        else:
            self.ballast.unlink()

    def close(self) -> None:
        if self.mode == "tmpfs":
            subprocess.run(["umount", "-l", str(self.folder)], check=True)


def _steps_in(warnings: list[str], marker: str) -> list[int]:
    """The checkpoint steps named by warnings like 'checkpoint at step 20 not saved (...)'."""
    return sorted(int(w.split("checkpoint at step ")[1].split()[0]) for w in warnings if marker in w)


def test_a_full_disk_then_a_kill_then_a_corrupt_checkpoint_and_the_run_still_finishes(
        ray_session, token_cache, tmp_path, monkeypatch, capsys):
    """One run through three faults (two Ray fits instead of three keeps the suite short):

    1. the checkpoint folder fills up: a save fails, training goes on, a warning is recorded, and
       the next save succeeds once the space is back;
    2. the run's only worker is SIGKILLed with no restarts allowed, so the run stops unfinished;
    3. its newest checkpoint is then corrupted, and the same command, run again, skips it for the
       one before, says so on the console and in results.json and training.log, and finishes.
    """
    steps, name = 80, "faults"
    monkeypatch.setenv("SPECTRAL_GPT_CACHE", token_cache)
    argv = ["train", "--steps", str(steps), "--batch-size", "8", "--eval-interval", "20", "--checkpoint-interval",
            "10", "--log-interval", "5", "--keep-last", "2", "--max-failures", "0", "--name", name,
            "--output", str(tmp_path)]
    args = parse_args(build_parser(), argv)
    run_dir = tmp_path / f"{name}_20250101_000000_faults"  # where `--resume auto` finds it again
    (run_dir / "checkpoints").mkdir(parents=True)
    disk = FullDisk(run_dir / "checkpoints")
    print(f"disk-full path that ran: {disk.mode}")  # shown with -s or on failure
    phase: dict[str, int] = {}

    def inject(progress: dict) -> None:
        refused = _steps_in(progress.get("warnings", []), "not saved")
        if "filled" not in phase and progress.get("checkpoint_step", 0) >= 10:
            disk.fill(progress["monitor_pid"])
            phase["filled"] = progress["checkpoint_step"]
        elif "filled" in phase and "freed" not in phase and refused:
            disk.free()
            phase["freed"] = progress["step"]
        elif "freed" in phase and "killed" not in phase and progress.get("checkpoint_step", 0) > refused[-1]:
            os.kill(progress["workers"][0], signal.SIGKILL)
            phase["killed"] = progress["checkpoint_step"]

    try:
        first = run_training(settings_from_args(args, args.experiment, args.name), on_progress=inject,
                             poll_seconds=0.05, run_dir=run_dir)
        assert "killed" in phase, f"phases reached ({disk.mode}): {phase}; {first}"
        assert first.status == "failed", first

        # 1. The full disk: a warning with the kernel's reason, in the outcome, results.json and training.log.
        refused = _steps_in(first.warnings, "not saved")
        assert refused and all(disk.refusal in w for w in first.warnings if "not saved" in w), first.warnings
        assert json.loads((run_dir / "results.json").read_text())["warnings"] == first.warnings
        log_text = (run_dir / "logs" / "training.log").read_text()
        assert all(f"WARNING checkpoint at step {s} not saved" in log_text for s in refused)
        manager = CheckpointManager(run_dir, keep_last_n=2)
        committed = [c["step"] for c in manager.list_checkpoints()]
        assert not set(refused) & set(committed) and committed[-1] > refused[-1], (refused, committed)
        files = {p.name for p in manager.checkpoint_dir.glob("checkpoint_step_*.pt")}
        assert files == {f"checkpoint_step_{s}.pt" for s in committed}, "a refused save left a file behind"
        rows = MetricsLogger(run_dir / "logs").load_metrics()
        assert [r["step"] for r in rows][:phase["killed"] // 5 + 1] == list(range(0, phase["killed"] + 1, 5))

        # 2.-3. Corrupt the newest checkpoint of the stopped run, then run the same command again.
        assert len(committed) >= 2 and committed[-1] < steps - 1, committed
        newest, previous = committed[-1], committed[-2]
        newest_file = manager.checkpoint_dir / f"checkpoint_step_{newest}.pt"
        data = bytearray(newest_file.read_bytes())
        data[len(data) // 2] ^= 0xFF
        newest_file.write_bytes(bytes(data))
        capsys.readouterr()
        assert main(argv) == 0
        out = capsys.readouterr().out
        said = (f"checkpoint {newest_file} is corrupt (sha256 mismatch); skipping it; resuming from the "
                f"checkpoint of step {previous} instead")
        assert f"warning: {said}" in out, out
        assert f"resumed from step {previous + 1}" in out, out
        assert f"run {name} completed in {run_dir}: {steps} steps" in out, out
        results = json.loads((run_dir / "results.json").read_text())
        assert results["status"] == "completed" and said in results["warnings"], results
        assert f"WARNING {said}" in (run_dir / "logs" / "training.log").read_text()
        attempts = json.loads((run_dir / "logs" / "attempts.json").read_text())["attempts"]
        assert attempts[-1]["start_step"] == previous + 1
        rows = MetricsLogger(run_dir / "logs").load_metrics()
        assert [r["step"] for r in rows] == [*range(0, steps, 5), steps - 1]
        latest = manager.load_latest_checkpoint()
        assert latest["step"] == steps - 1 and latest["state"]["step"] == steps
    finally:
        disk.close()


@pytest.fixture(autouse=True)
def _quiet_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Wide, plain console lines, so a message is matched whole (rich wraps at 80 columns otherwise)."""
    monkeypatch.setenv("COLUMNS", "400")


_LIMITED_SAVER = """
import sys, torch
from orchestrator.monitoring import CheckpointManager
manager = CheckpointManager(sys.argv[1], keep_last_n=2)
print(manager.save_checkpoint(1, state={"w": torch.zeros(4)}) is not None)
print(manager.save_checkpoint(2, state={"w": torch.zeros(1_000_000)}) is None, manager.last_warnings)
print([c["step"] for c in manager.list_checkpoints()])
"""


def test_a_write_cut_short_by_the_kernel_is_a_warning_not_a_crash(tmp_path):
    """torch's zip writer reports a failed write as RuntimeError("unexpected pos"); the manager must still
    see the disk's OSError (here EFBIG from a real RLIMIT_FSIZE) and keep the previous checkpoint."""
    limit = 256 * 1024  # the 4 MB save is cut short part-way, the small one fits

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run([sys.executable, "-c", _LIMITED_SAVER, str(tmp_path)], capture_output=True, text=True,
                          preexec_fn=limit_file_size, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    first, second, committed = done.stdout.splitlines()
    assert first == "True" and second.startswith("True") and os.strerror(errno.EFBIG) in second, done.stdout
    assert committed == "[1]"
    assert not list((tmp_path / "checkpoints").glob("*.tmp-*"))
