"""Checkpoints that survive crashes: atomic files, sha256-verified loads, last-N plus best retention.

Layout (the seed's): ``checkpoints/checkpoint_step_<N>.pt`` plus the convenience pointer
``checkpoint_latest.pt`` (a symlink, or a copy where symlinks are unsupported) and
``checkpoints/manifest.json``. A checkpoint *counts* only once the manifest lists it with its
sha256; the manifest, not the pointer or a directory listing, is the source of truth, so a crash at
any instant leaves the previous committed checkpoint loadable. Manifest format (version 1)::

    {"format": 1, "updated": ISO time, "keep_last_n": 3, "best_step": 400 | null,
     "checkpoints": [{"step", "file", "sha256", "size_bytes", "timestamp", "val_loss"}, ...]}

Ascending by step. ``sha256`` is null only for files adopted from a folder that had no manifest
(written by the original code); those load unverified. One writer per run folder (the monitoring
actor); any number of readers, which re-read the manifest on every call and never rewrite it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import re
import shutil
from collections import OrderedDict
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, TypedDict

import torch

from orchestrator.monitoring import atomic
from orchestrator.monitoring.cadence import save_step
from orchestrator.monitoring.identity import package_git_info

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
"""The commit record of ``checkpoints/``: a checkpoint it does not list does not count."""
LATEST_NAME = "checkpoint_latest.pt"
"""The seed's pointer to the newest checkpoint, kept for users; the manager itself never reads it."""
_STEP_FILE = re.compile(r"^checkpoint_step_(\d+)\.pt$")
_LEAF_TYPES = (str, bytes, int, float, complex, bool, type(None), torch.dtype, torch.device)
_CONTAINER_TYPES = (dict, OrderedDict, list, tuple, set, torch.Size)


class CheckpointInfo(TypedDict):
    """One row of :meth:`CheckpointManager.list_checkpoints` (the seed's keys plus best tracking)."""

    step: int
    path: str
    size_mb: float
    modified: str
    val_loss: float | None
    is_best: bool


def checkpoint_file_name(step: int) -> str:
    """The seed's file name for ``step`` (no zero padding, so the seed's docs stay true)."""
    return f"checkpoint_step_{step}.pt"


class CheckpointManager:
    """Saves and restores the complete training state of one run, keeping the last N and the best.

    ``save_checkpoint`` never raises on I/O trouble (full disk, read-only folder): it logs a warning
    and returns ``None``, and the next save tries again, because losing one checkpoint must not kill
    a training run.
    """

    def __init__(self, experiment_dir: Path | str, save_interval: int = 1000, keep_last_n: int = 3):
        if not isinstance(keep_last_n, int) or keep_last_n < 1:
            raise ValueError(f"keep_last_n={keep_last_n!r} must be an integer >= 1")
        if not isinstance(save_interval, int) or save_interval < 1:
            raise ValueError(f"save_interval={save_interval!r} must be an integer >= 1")
        self.experiment_dir = Path(experiment_dir)
        self.checkpoint_dir = self.experiment_dir / "checkpoints"
        self.save_interval = save_interval
        self.keep_last_n = keep_last_n
        self.latest_pointer = self.checkpoint_dir / LATEST_NAME
        self.manifest_path = self.checkpoint_dir / MANIFEST_NAME
        self.last_warnings: list[str] = []
        """What the latest save or load call warned about, one line each (also logged): a caller
        that reports problems elsewhere (the monitoring actor: results.json, the console) reads it."""
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self._reconcile()

    def should_checkpoint(self, step: int) -> bool:
        """Whether ``step`` is a save step (never step 0: there is nothing to save yet)."""
        return save_step(step, self.save_interval)

    def save_checkpoint(
        self,
        step: int,
        model: torch.nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        loss_history: list[float] | None = None,
        config: dict[str, Any] | None = None,
        *,
        state: dict[str, Any] | None = None,
        val_loss: float | None = None,
    ) -> Path | None:
        """Commit the training state at ``step``; return its path, or ``None`` if the disk refused.

        The seed's positional form stores ``model_state_dict``/``optimizer_state_dict``/
        ``loss_history``; the orchestrator passes the complete ``state`` (stored under ``"state"``).
        ``val_loss`` ranks checkpoints for best-keeping. Saving step S supersedes committed
        checkpoints past S (they belong to an abandoned timeline). Raises ``TypeError`` when the
        payload holds a value ``torch.load(weights_only=True)`` could not read back: that is a bug
        to find at the first save, not a corrupt checkpoint to discover at resume.
        """
        step = int(step)
        self.last_warnings = []
        payload = self._payload(step, model, optimizer, loss_history, config, state, val_loss)
        _check_loadable(payload, "payload")
        final = self.checkpoint_dir / checkpoint_file_name(step)
        digest = None
        try:
            digest = self._write(final, payload)
            entry = {
                "step": step,
                "file": final.name,
                "sha256": digest,
                "size_bytes": final.stat().st_size,
                "timestamp": payload["timestamp"],
                "val_loss": payload["val_loss"],
            }
            self._commit(entry)
        except OSError as exc:
            if digest is not None and not self._listed(final.name):  # written, never committed: free its space
                with contextlib.suppress(OSError):
                    final.unlink()
            self._warn(f"checkpoint at step {step} not saved ({exc}); the next save will try again")
            return None
        self._update_pointer(final.name)
        return final

    def holds(self, step: int) -> bool:
        """Whether ``step`` is committed and its file still matches its sha256 (read in full): then a
        second save of it, such as a call retried after its writer died past the commit, has nothing to
        add, and rewriting the file would leave it unverifiable until the manifest catches up."""
        entry = next((e for e in self._entries() if e["step"] == step), None)
        if entry is None or entry["sha256"] is None:
            return False
        try:
            return _sha256_file(self.checkpoint_dir / entry["file"]) == entry["sha256"]
        except OSError:
            return False

    def load_checkpoint(self, step: int) -> dict[str, Any] | None:
        """The committed checkpoint of ``step`` after its sha256 check, or ``None`` (with a warning)."""
        self.last_warnings = []
        entry = next((e for e in self._entries() if e["step"] == step), None)
        if entry is None:
            self._warn(f"no committed checkpoint for step {step} in {self.checkpoint_dir}")
            return None
        return self._load(entry)

    def load_latest_checkpoint(self) -> dict[str, Any] | None:
        """The newest committed checkpoint that verifies and loads; older ones are tried in turn."""
        self.last_warnings = []
        for entry in reversed(self._entries()):
            payload = self._load(entry)
            if payload is not None:
                return payload
        return None

    def list_checkpoints(self) -> list[CheckpointInfo]:
        """Committed checkpoints, ascending by step, with size, time, validation loss and best flag."""
        entries = self._entries()
        best = _best_step(entries)
        rows: list[CheckpointInfo] = []
        for e in entries:
            path = self.checkpoint_dir / e["file"]
            try:
                st = path.stat()
            except OSError:
                continue
            rows.append({
                "step": e["step"],
                "path": str(path),
                "size_mb": st.st_size / 2**20,
                "modified": datetime.fromtimestamp(st.st_mtime).isoformat(),
                "val_loss": e["val_loss"],
                "is_best": e["step"] == best,
            })
        return rows

    def best_checkpoint(self) -> Path | None:
        """Path of the checkpoint with the lowest validation loss (ties: the earliest), if any has one."""
        best = _best_step(self._entries())
        return None if best is None else self.checkpoint_dir / checkpoint_file_name(best)

    def latest_checkpoint(self) -> Path | None:
        """Path of the newest committed checkpoint (not verified; use ``load_latest_checkpoint``)."""
        entries = self._entries()
        return self.checkpoint_dir / entries[-1]["file"] if entries else None

    def _payload(self, step, model, optimizer, loss_history, config, state, val_loss) -> dict[str, Any]:
        if val_loss is not None:
            val_loss = float(val_loss)
            val_loss = val_loss if math.isfinite(val_loss) else None
        payload: dict[str, Any] = {
            "step": int(step),
            "timestamp": datetime.now().isoformat(),
            "git_hash": package_git_info()["hash"],
            "config": dict(config) if config is not None else {},
            "val_loss": val_loss,
        }
        if model is not None:
            payload["model_state_dict"] = getattr(model, "module", model).state_dict()
        if optimizer is not None:
            payload["optimizer_state_dict"] = optimizer.state_dict()
        if loss_history is not None:
            payload["loss_history"] = [float(x) for x in loss_history]
        if state is not None:
            payload["state"] = state
        return payload

    def _write(self, final: Path, payload: dict[str, Any]) -> str:
        sha = hashlib.sha256()

        def write(fh: BinaryIO) -> None:
            writer = _HashingWriter(fh, sha)
            try:
                torch.save(payload, writer)
            except RuntimeError:
                # torch's zip writer turns a failed write() into "unexpected pos ..."; report the disk's own error.
                if writer.error is not None:
                    raise writer.error from None
                raise

        atomic.write_atomic(final, write)
        return sha.hexdigest()

    def _commit(self, entry: dict[str, Any]) -> None:
        """Record ``entry`` in the manifest (the commit), then delete what retention lets go."""
        previous = self._entries()
        superseded = [e for e in previous if e["step"] > entry["step"]]
        if superseded:
            log.warning("saving step %d supersedes later checkpoints %s", entry["step"],
                        [e["step"] for e in superseded])
        entries = [e for e in previous if e["step"] < entry["step"]] + [entry]
        keep = set(e["step"] for e in entries[-self.keep_last_n:])
        best = _best_step(entries)
        if best is not None:
            keep.add(best)
        kept = [e for e in entries if e["step"] in keep]
        atomic.write_json_atomic(self.manifest_path, {
            "format": 1,
            "updated": datetime.now().isoformat(),
            "keep_last_n": self.keep_last_n,
            "best_step": best,
            "checkpoints": kept,
        })
        kept_files = {e["file"] for e in kept}
        for path in self.checkpoint_dir.glob("checkpoint_step_*.pt"):
            if path.name not in kept_files:
                try:
                    path.unlink()
                except OSError as exc:
                    log.warning("could not delete old checkpoint %s (%s)", path, exc)

    def _update_pointer(self, target_name: str) -> None:
        try:
            atomic.symlink_atomic(self.latest_pointer, target_name)
            return
        except OSError:
            pass
        try:
            src = self.checkpoint_dir / target_name
            with open(src, "rb") as fh_in:
                atomic.write_atomic(self.latest_pointer, lambda fh: shutil.copyfileobj(fh_in, fh))
        except OSError as exc:
            log.warning("could not update %s (%s); the checkpoint itself is committed",
                        self.latest_pointer, exc)

    def _load(self, entry: dict[str, Any]) -> dict[str, Any] | None:
        path = self.checkpoint_dir / entry["file"]
        try:
            if entry["sha256"] is not None and _sha256_file(path) != entry["sha256"]:
                self._warn(f"checkpoint {path} is corrupt (sha256 mismatch); skipping it")
                return None
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file means "use an older one"
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            self._warn(f"checkpoint {path} could not be loaded ({type(exc).__name__}: {first_line}); skipping it")
            return None
        if not isinstance(payload, dict):
            self._warn(f"checkpoint {path} does not hold a dict; skipping it")
            return None
        return payload

    def _warn(self, message: str) -> None:
        log.warning("%s", message)
        self.last_warnings.append(message)

    def _entries(self) -> list[dict[str, Any]]:
        """Committed entries whose files exist, ascending by step (re-read: another process writes)."""
        entries = self._read_manifest()
        if entries is None:
            entries = self._adopt_unmanifested()
        return [e for e in entries if (self.checkpoint_dir / e["file"]).exists()]

    def _listed(self, name: str) -> bool:
        """Whether the manifest on disk lists the file ``name``: a commit can fail after its manifest
        was replaced (fsync of the folder), and then the file is the newest checkpoint. Without a
        readable manifest the files on disk are adopted, so the file counts as listed."""
        entries = self._read_manifest()
        return entries is None or any(e["file"] == name for e in entries)

    def _read_manifest(self) -> list[dict[str, Any]] | None:
        try:
            data = json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("checkpoint manifest %s unreadable (%s); using the files on disk",
                        self.manifest_path, exc)
            return None
        listed = data.get("checkpoints") if isinstance(data, dict) else None
        if not isinstance(listed, list):
            log.warning("checkpoint manifest %s holds no list of checkpoints; using the files on disk",
                        self.manifest_path)
            return None
        entries = []
        for e in listed:
            try:
                step = int(e["step"])
                val = e.get("val_loss")
                entries.append({
                    "step": step,
                    "file": checkpoint_file_name(step),
                    "sha256": e.get("sha256"),
                    "size_bytes": e.get("size_bytes"),
                    "timestamp": e.get("timestamp"),
                    "val_loss": float(val) if val is not None else None,
                })
            except (KeyError, TypeError, ValueError):
                log.warning("malformed manifest entry %r ignored", e)
        return sorted(entries, key=lambda e: e["step"])

    def _adopt_unmanifested(self) -> list[dict[str, Any]]:
        """Entries for step files of a folder with no manifest (the original code wrote none)."""
        entries = []
        for path in self.checkpoint_dir.glob("checkpoint_step_*.pt"):
            m = _STEP_FILE.match(path.name)
            if m and not path.is_symlink():
                entries.append({"step": int(m.group(1)), "file": path.name, "sha256": None,
                                "size_bytes": None, "timestamp": None, "val_loss": None})
        return sorted(entries, key=lambda e: e["step"])

    def _reconcile(self) -> None:
        """Clear dead writers' temp files and report manifest/disk disagreements once, at start."""
        for path in atomic.remove_stale_temps(self.checkpoint_dir):
            log.info("removed temporary file %s left by an interrupted save", path)
        listed = self._read_manifest()
        if listed is None:
            return
        names = {e["file"] for e in listed}
        for e in listed:
            if not (self.checkpoint_dir / e["file"]).exists():
                log.warning("checkpoint %s is in the manifest but missing on disk; ignoring it", e["file"])
        for path in self.checkpoint_dir.glob("checkpoint_step_*.pt"):
            if path.name not in names:
                log.warning("checkpoint file %s was never committed (interrupted save?); ignoring it",
                            path.name)


class _HashingWriter:
    """A file wrapper that hashes the bytes on their way to disk (no second read of a big file), and
    keeps the ``OSError`` of a failed write (a full disk, a file size limit) for the caller."""

    def __init__(self, fh: BinaryIO, sha: Any):
        self._fh = fh
        self._sha = sha
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        self._sha.update(data)
        try:
            return self._fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self._fh.flush()


def _best_step(entries: list[dict[str, Any]]) -> int | None:
    scored = [e for e in entries if e["val_loss"] is not None and math.isfinite(e["val_loss"])]
    if not scored:
        return None
    return min(scored, key=lambda e: (e["val_loss"], e["step"]))["step"]


def _sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            sha.update(chunk)
    return sha.hexdigest()


def _check_loadable(value: Any, where: str) -> None:
    """Raise ``TypeError`` naming the first value a weights-only load would reject."""
    if isinstance(value, torch.Tensor) or type(value) in _LEAF_TYPES:
        return
    if type(value) not in _CONTAINER_TYPES:
        raise TypeError(f"{where} is a {type(value).__name__}, which torch.load(weights_only=True) "
                        "rejects; convert it to a tensor, number, string, list or dict")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_loadable(k, f"{where} key {k!r}")
            _check_loadable(v, f"{where}[{k!r}]")
    else:
        for i, v in enumerate(value):
            _check_loadable(v, f"{where}[{i}]")

