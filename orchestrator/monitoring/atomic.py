"""Atomic file writes: a reader, or a process killed mid-write, never sees half a file.

Every file this library writes goes through :func:`open_output`, the one write seam (tests inject
``OSError`` there to simulate a full disk or a read-only folder). Whole-file writes go to a temporary
name in the destination folder, are fsynced, then ``os.replace``-d over the final name, and the folder
is fsynced so the rename itself survives a power cut.

Temporary names are ``<final name>.tmp-<host>-<pid>-<random>``: a glob for the final pattern
(``checkpoint_step_*.pt``, ``*.png``) never matches one, and :func:`remove_stale_temps` can tell a
leftover of a dead writer from a file another live process is still writing.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, BinaryIO

TEMP_MARK = ".tmp-"
"""Separates a final file name from the writer's identity in a temporary name."""

STALE_FOREIGN_TEMP_S = 3600.0
"""A temporary file of another host counts as abandoned after this many seconds without writes."""

_HOST = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:40] or "host"


def open_output(path: Path, mode: str) -> IO[Any]:
    """Open ``path`` for writing: the single write seam, so one patch simulates a failing disk."""
    return open(path, mode)


def temp_path_for(final: Path) -> Path:
    """A fresh temporary name beside ``final`` that names this host and process as its writer."""
    final = Path(final)
    return final.with_name(f"{final.name}{TEMP_MARK}{_HOST}-{os.getpid()}-{secrets.token_hex(4)}")


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` durable (POSIX needs the folder itself fsynced)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(final: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``final`` through ``write(fh)`` so that it either appears whole or not at all.

    Raises the underlying ``OSError``; the temporary file is removed on any failure.
    """
    final = Path(final)
    tmp = temp_path_for(final)
    try:
        with open_output(tmp, "xb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    fsync_dir(final.parent)


def write_bytes_atomic(final: Path, data: bytes) -> None:
    """Atomically replace ``final`` with ``data``."""
    write_atomic(final, lambda fh: fh.write(data))


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats turned into ``None``, so strict JSON readers accept it."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        return json_safe(value.item())
    return value


def write_json_atomic(final: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented strict JSON (no NaN/Infinity tokens)."""
    text = json.dumps(json_safe(obj), indent=2, allow_nan=False, default=str) + "\n"
    write_bytes_atomic(final, text.encode("utf-8"))


def symlink_atomic(final: Path, target_name: str) -> None:
    """Point the symlink ``final`` at ``target_name`` (relative) without a moment with no link."""
    final = Path(final)
    tmp = temp_path_for(final)
    try:
        os.symlink(target_name, tmp)
        os.replace(tmp, final)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    fsync_dir(final.parent)


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a temporary name made by :func:`temp_path_for`."""
    return TEMP_MARK in name


def remove_stale_temps(directory: Path) -> list[Path]:
    """Delete temporary files in ``directory`` whose writer is gone; return what was removed.

    A temporary file of this host is stale when its writer pid no longer runs; one of another host
    (shared storage) when it has not been written for :data:`STALE_FOREIGN_TEMP_S`. A live writer's
    file is left alone, so a reader opening a run that is still training never breaks a save.
    """
    removed = []
    for path in Path(directory).glob(f"*{TEMP_MARK}*"):
        if _is_stale(path):
            _unlink_quietly(path)
            removed.append(path)
    return removed


def _is_stale(path: Path) -> bool:
    try:
        host, pid, _ = path.name.rsplit(TEMP_MARK, 1)[1].split("-")
        pid_num = int(pid)
    except ValueError:
        return False
    if host != _HOST:
        try:
            return time.time() - path.lstat().st_mtime > STALE_FOREIGN_TEMP_S
        except OSError:
            return False
    if pid_num == os.getpid():
        return False
    try:
        os.kill(pid_num, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
