"""A full disk injected into a real run (real Ray, the tiny model), and a write the kernel cuts short.

A checkpoint the disk refuses must not stop training: the monitoring actor records a warning (the
driver's progress and console, ``logs/training.log``, ``results.json["warnings"]``) and the next
save succeeds once there is space again.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

from orchestrator.cli import build_parser, settings_from_args
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


def test_a_full_disk_costs_a_checkpoint_not_the_run(ray_session, token_cache, tmp_path, monkeypatch):
    """The checkpoint folder fills up mid-run: a save fails, training goes on, a warning is recorded, and
    the next save succeeds once the space is back. (A corrupt checkpoint found at resume is in
    test_cli.py's killed-driver test, which resumes anyway.)"""
    steps, name = 80, "faults"
    argv = ["train", "--steps", str(steps), "--batch-size", "8", "--eval-interval", "20", "--checkpoint-interval",
            "10", "--log-interval", "5", "--keep-last", "2", "--name", name, "--output", str(tmp_path)]
    monkeypatch.setenv("SPECTRAL_GPT_CACHE", token_cache)
    args = parse_args(build_parser(), argv)
    settings = settings_from_args(args, args.experiment, args.name)
    run_dir = tmp_path / f"{name}_20250101_000000_faults"
    (run_dir / "checkpoints").mkdir(parents=True)
    disk = FullDisk(run_dir / "checkpoints")
    print(f"disk-full path that ran: {disk.mode}")  # shown with -s or on failure
    phase: dict[str, int] = {}

    def inject(progress: dict) -> None:
        if "filled" not in phase and progress.get("checkpoint_step", 0) >= 10:
            disk.fill(progress["monitor_pid"])
            phase["filled"] = progress["checkpoint_step"]
        elif "filled" in phase and "freed" not in phase and _steps_in(progress.get("warnings", []), "not saved"):
            disk.free()
            phase["freed"] = progress["step"]

    try:
        outcome = run_training(settings, on_progress=inject, poll_seconds=0.05, run_dir=run_dir)
        assert "freed" in phase, f"phases reached ({disk.mode}): {phase}; {outcome}"
        assert outcome.status == "completed", outcome.error
        refused = _steps_in(outcome.warnings, "not saved")
        assert refused and all(disk.refusal in w for w in outcome.warnings if "not saved" in w), outcome.warnings
        assert json.loads((run_dir / "results.json").read_text())["warnings"] == outcome.warnings
        log_text = (run_dir / "logs" / "training.log").read_text()
        assert all(f"WARNING checkpoint at step {s} not saved" in log_text for s in refused)
        manager = CheckpointManager(run_dir, keep_last_n=2)
        committed = [c["step"] for c in manager.list_checkpoints()]
        assert not set(refused) & set(committed) and committed[-1] == steps - 1 > refused[-1], (refused, committed)
        files = {p.name for p in manager.checkpoint_dir.glob("checkpoint_step_*.pt")}
        assert files == {f"checkpoint_step_{s}.pt" for s in committed}, "a refused save left a file behind"
        rows = MetricsLogger(run_dir / "logs").load_metrics()
        assert [r["step"] for r in rows] == [*range(0, steps, 5), steps - 1]
        assert manager.load_latest_checkpoint()["state"]["step"] == steps
    finally:
        disk.close()  # after the reads: a tmpfs unmounted takes the checkpoints with it


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
