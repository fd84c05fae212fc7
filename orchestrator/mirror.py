"""The staging copy of a run at a storage URI: written locally, uploaded as it changes.

The monitoring library writes plain POSIX files (atomic renames, fsync), which an object store cannot
give. So a run at a URI is worked on through a local *staging* copy on the monitoring actor's node:
:class:`RunMirror` downloads the run folder there when the actor starts (a resumed run, or an actor
Ray restarted after its process died) and uploads what changed at every checkpoint, plot and result, and at least
every :data:`MIRROR_INTERVAL_S` while metric rows arrive. Uploads go in commit order (checkpoint
files, then the manifest that lists them, then the rest, ``results.json`` last) and files the run
let go are deleted only after that, so whatever instant the actor dies at, the remote folder is a
consistent run folder whose newest listed checkpoint loads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from orchestrator.monitoring import atomic
from orchestrator.monitoring.checkpoints import MANIFEST_NAME
from orchestrator.storage import first_line, join_location, open_filesystem, read_json

log = logging.getLogger(__name__)

MIRROR_INTERVAL_S = 30.0
"""Longest time metric rows stay only in the staging copy while a run logs."""
NOT_DOWNLOADED = (".ray", "visualizations")
"""Top-level folders a staging copy leaves remote: Ray Train's own (Ray writes it there itself) and
the plots (only ever written, never read back)."""
_LET_GO = re.compile(r"^checkpoints/checkpoint_step_\d+\.pt$")
"""The only files a run deletes (retention), so the only ones a sync deletes remotely."""
_CHUNK = 8 << 20
MANIFEST_REL = f"checkpoints/{MANIFEST_NAME}"
"""The manifest's path inside a run folder: the file that commits the checkpoints it lists."""


def default_staging_root() -> Path:
    """Where monitoring actors keep staging copies of runs at a URI (``SPECTRAL_GPT_STAGING`` or /tmp)."""
    return Path(os.environ.get("SPECTRAL_GPT_STAGING") or Path(tempfile.gettempdir()) / "spectral-gpt-staging")


class RunMirror:
    """A run folder at a URI, worked on through a local staging copy that is uploaded as it changes.

    One mirror writes a run at a time (its monitoring actor); anyone may read the remote folder.
    """

    def __init__(self, location: str, filesystem: pafs.FileSystem, remote_root: str, staging: Path) -> None:
        self.location = location
        self.filesystem = filesystem
        self.remote_root = remote_root.rstrip("/")
        self.staging = Path(staging)
        self._synced: dict[str, tuple[int, int]] = {}
        """Files the remote holds as the staging copy has them: relative path -> (size, mtime_ns)."""
        self._made_dirs: set[str] = set()
        self._last_sync = time.monotonic()
        self._remote_listing: frozenset[str] | None = None
        """The checkpoint files the remote manifest lists (None: unknown), which no sync deletes."""
        self.released = False
        """Set once :meth:`release` dropped the staging copy: a later sync has nothing to send."""
        self.last_error: str | None = None
        """Why the latest sync did not upload everything (None when it did)."""

    @classmethod
    def attach(cls, location: str, staging_root: Path | None = None,
               filesystem: pafs.FileSystem | None = None) -> "RunMirror":
        """Open the run at the URI ``location`` and download it into a fresh staging copy here;
        ``filesystem`` serves the URI's path instead of the one its scheme names (as Ray Train's
        ``storage_filesystem``: a custom endpoint or client).

        A staging copy already here was left by an actor of this run whose last uploads failed (its
        release keeps it): where it is ahead of the remote it goes up first, and where that fails
        too this raises ``OSError`` rather than replace the only copy of that work.
        """
        fs, root = open_filesystem(location)
        fs = filesystem or fs
        digest = hashlib.sha256(location.encode()).hexdigest()[:16]
        staging = Path(staging_root or default_staging_root()) / digest / root.rstrip("/").rsplit("/", 1)[-1]
        mirror = cls(location, fs, root, staging)
        if staging.is_dir() and mirror._kept_copy_is_ahead() and not mirror.sync():
            raise OSError(f"staging copy {staging} holds work that {location} lacks and it could not be "
                          f"uploaded ({mirror.last_error}); it is kept")
        mirror.download()
        return mirror

    def _kept_copy_is_ahead(self) -> bool:
        """Whether the staging copy here has a newer committed checkpoint than the remote, or the same
        one and the results the remote lacks (a run whose end never went up)."""
        local = _newest_step(read_json(pafs.LocalFileSystem(), str(self.staging / MANIFEST_REL)))
        remote = _newest_step(read_json(self.filesystem, f"{self.remote_root}/{MANIFEST_REL}"))
        ended_here = (self.staging / "results.json").is_file() and self.filesystem.get_file_info(
            f"{self.remote_root}/results.json").type == pafs.FileType.NotFound
        return local > remote or (local == remote and ended_here)

    def download(self) -> int:
        """Replace the staging copy with the remote files (plots and Ray's folder stay remote); a count."""
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir(parents=True)
        self._synced.clear()
        selector = pafs.FileSelector(self.remote_root, recursive=True, allow_not_found=True)
        prefix = self.remote_root + "/"
        for info in self.filesystem.get_file_info(selector):
            rel = info.path[len(prefix):] if info.path.startswith(prefix) else None
            if (rel is None or info.type != pafs.FileType.File or rel.split("/", 1)[0] in NOT_DOWNLOADED
                    or atomic.is_temp_name(info.base_name)):
                continue
            local = self.staging / rel
            local.parent.mkdir(parents=True, exist_ok=True)
            with self.filesystem.open_input_stream(info.path) as src, open(local, "wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
            self._synced[rel] = _signature(local)
        manifest = self.staging / MANIFEST_REL
        self._remote_listing = _listed_files(manifest.read_bytes()) if manifest.is_file() else None
        return len(self._synced)

    def sync(self) -> bool:
        """Upload what changed in commit order, then delete remote files the run let go.

        True when the remote now holds the staging copy. Never raises: a failure is a warning (and
        :attr:`last_error`) and what comes after it waits for the next sync, so a checkpoint that did
        not go up is never listed by an uploaded manifest. The manifest goes up as one read of it, and
        only once every checkpoint that read lists is up: one committed while this sync uploads is left,
        with the deletions the new manifest allows, to the sync its commit calls (False, no error).
        Only checkpoint files go remotely, and only those the uploaded manifest no longer lists: a
        staging copy that lost its files (swept from /tmp) deletes nothing.
        """
        self._last_sync = time.monotonic()
        if self.released or not self.staging.is_dir():
            self.last_error = None if self.released else f"staging copy {self.staging} is missing"
            return self.released
        local = self._scan()
        changed = sorted((rel for rel, sig in local.items() if self._synced.get(rel) != sig), key=_upload_order)
        self.last_error = None
        manifest_up = True
        try:
            for rel in changed:
                if rel == MANIFEST_REL:
                    manifest_up = self._upload_manifest(local[rel])
                    continue
                try:
                    self._upload(rel)
                except FileNotFoundError:
                    if (self.staging / rel).exists():
                        raise
                    continue  # let go since the scan (retention): the manifest that says so is the next sync's
                self._synced[rel] = local[rel]
            if not manifest_up:
                return False  # the remote manifest may still list what the local one let go
            listing = self._remote_listing
            for rel in [r for r in self._synced if r not in local and _LET_GO.match(r)
                        and listing is not None and r not in listing]:
                try:
                    self.filesystem.delete_file(f"{self.remote_root}/{rel}")
                except FileNotFoundError:
                    pass
                del self._synced[rel]
        except (OSError, pa.ArrowException) as exc:
            self.last_error = first_line(exc)
            log.warning("run folder %s not fully uploaded (%s); the next sync tries again",
                        self.location, self.last_error)
            return False
        return True

    def _upload_manifest(self, scanned: tuple[int, int]) -> bool:
        """Upload the manifest as read now if the checkpoints it lists are up (and record it), else False."""
        path = self.staging / MANIFEST_REL
        data = path.read_bytes()
        if _signature(path) != scanned:
            return False  # replaced while this sync ran: the next one scans the new one
        listed = _listed_files(data)
        if any(self._synced.get(rel) != _signature_or_none(self.staging / rel) for rel in listed or ()):
            return False
        self._upload(MANIFEST_REL, data)
        self._synced[MANIFEST_REL] = scanned
        self._remote_listing = listed
        return True

    def sync_if_due(self) -> bool:
        """:meth:`sync` when the last one is :data:`MIRROR_INTERVAL_S` old (metric rows between saves)."""
        return self.sync() if time.monotonic() - self._last_sync >= MIRROR_INTERVAL_S else True

    def remote_location(self, local_path: Path | str) -> str:
        """The URI of a file of the staging copy once uploaded (e.g. the best checkpoint's)."""
        return join_location(self.location, *Path(local_path).relative_to(self.staging).parts)

    def release(self) -> bool:
        """Upload what is left and delete the staging copy (kept, with a warning, if the upload fails).
        The caller stops every other sync first: one running beside the deletion would see files go."""
        if not (self.sync() or (self.last_error is None and self.sync())):
            log.warning("staging copy %s kept: uploading it to %s failed", self.staging, self.location)
            return False
        self.released = True
        shutil.rmtree(self.staging, ignore_errors=True)
        try:
            self.staging.parent.rmdir()
        except OSError:
            pass  # another run of the same output is staged here too
        return True

    def _scan(self) -> dict[str, tuple[int, int]]:
        """Regular files of the staging copy; temporary files and the latest-pointer symlink stay local."""
        found = {}
        for folder, _, names in os.walk(self.staging):
            for name in names:
                path = Path(folder) / name
                if atomic.is_temp_name(name) or path.is_symlink():
                    continue
                try:
                    found[path.relative_to(self.staging).as_posix()] = _signature(path)
                except FileNotFoundError:
                    continue
        return found

    def _upload(self, rel: str, data: bytes | None = None) -> None:
        """Copy one file (or ``data``, read from it) up; where a half-written file would be visible,
        through a temporary name."""
        target = f"{self.remote_root}/{rel}"
        if not _writes_in_place(self.filesystem):
            self._copy_up(rel, target, data)  # an object appears whole when its stream closes
            return
        parent = target.rsplit("/", 1)[0]
        if parent not in self._made_dirs:
            self.filesystem.create_dir(parent, recursive=True)
            self._made_dirs.add(parent)
        temp = atomic.temp_path_for(Path(target)).as_posix()
        try:
            self._copy_up(rel, temp, data)
            self.filesystem.move(temp, target)
        except BaseException:
            try:
                self.filesystem.delete_file(temp)
            except (OSError, pa.ArrowException):
                pass
            raise

    def _copy_up(self, rel: str, target: str, data: bytes | None) -> None:
        if data is not None:
            with self.filesystem.open_output_stream(target) as dst:
                dst.write(data)
            return
        with open(self.staging / rel, "rb") as src, self.filesystem.open_output_stream(target) as dst:
            shutil.copyfileobj(src, dst, _CHUNK)


def _upload_order(rel: str) -> tuple[int, str]:
    """Files others point at go first: checkpoint files, the manifest committing them, results last."""
    if rel.startswith("checkpoints/checkpoint_step_"):
        rank = 0
    elif rel == MANIFEST_REL:
        rank = 1
    elif rel == "results.json":
        rank = 3
    else:
        rank = 2
    return rank, rel


def _writes_in_place(fs: pafs.FileSystem) -> bool:
    """Whether a file shows under its name while being written (POSIX-like), unlike an object store."""
    return fs.type_name in ("local", "hdfs") or (fs.type_name.startswith("py::fsspec") and "local" in fs.type_name)


def _signature(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _newest_step(manifest: dict[str, Any]) -> int:
    """The newest step a manifest commits (-1 for none, or an unreadable manifest)."""
    try:
        return max((int(e["step"]) for e in manifest.get("checkpoints", [])), default=-1)
    except (KeyError, TypeError, ValueError):
        return -1


def _listed_files(manifest: bytes) -> frozenset[str] | None:
    """The files a checkpoint manifest lists, relative to the run folder; None if it cannot be read
    (readers then adopt the files on disk, so none may go)."""
    try:
        return frozenset(f"checkpoints/{e['file']}" for e in json.loads(manifest)["checkpoints"])
    except (ValueError, KeyError, TypeError):
        return None


def _signature_or_none(path: Path) -> tuple[int, int] | None:
    try:
        return _signature(path)
    except FileNotFoundError:
        return None
