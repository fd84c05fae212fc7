"""Where run folders live: a local (or NFS) path, or a storage URI that every node of a cluster reaches.

``--output`` is an absolute path, or a URI that ``pyarrow.fs`` opens itself (``file://``, ``s3://``,
``gs://``, ``hdfs://``, ``abfs://`` ...) or one of a few fsspec file systems (``az://``, ``oss://`` ...)
that pyarrow reaches through ``PyFileSystem(FSSpecHandler(...))``, as Ray Train does for its storage.
A run at a URI is written through a local staging copy (:mod:`orchestrator.mirror`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.fs as pafs

from orchestrator.monitoring import generate_experiment_id
from spectral_gpt.config import ConfigError

log = logging.getLogger(__name__)

PYARROW_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")
"""URI schemes pyarrow.fs opens natively; Ray Train's ``storage_path`` takes the same ones."""
FSSPEC_SCHEMES = ("s3a", "az", "adl", "oss", "oci", "webhdfs", "dbfs")
"""Shared storages reached through fsspec; each needs its package (``adlfs`` for ``az://`` ...)."""
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SECRET_PARAM = re.compile(r"secret|password|token|credential|key|sig", re.IGNORECASE)
def is_uri(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` names storage by URI (``scheme://...``) rather than a local path."""
    return bool(_SCHEME.match(os.fspath(location)))


def normalize_output(output: str | os.PathLike[str]) -> str:
    """``output`` as settings store it: a local path made absolute (``~`` expanded, as a shell would
    have done for a flag but cannot for a config file's value), or a checked URI (ConfigError)."""
    if not isinstance(output, (str, os.PathLike)):
        raise ConfigError(f"output={output!r} must be a folder or a storage URI")
    text = os.fspath(output)
    if not text.strip():
        raise ConfigError(f"output={text!r} is empty; give a folder (the default is 'experiments') or a storage URI")
    return check_output(text if is_uri(text) else os.path.abspath(os.path.expanduser(text)))


def check_output(output: str) -> str:
    """Validate ``output`` and return its canonical form; one-line ConfigError when it cannot work.

    Only the text and the installed packages are checked, never the network: pyarrow's ``s3://``
    resolves the bucket's region with a request (6 s to fail offline) and ``gs://`` can hang.
    """
    if not is_uri(output):
        if not os.path.isabs(output):
            raise ConfigError(f"output={output!r} must be an absolute path or a storage URI "
                              f"({', '.join(s + '://' for s in (*PYARROW_SCHEMES, *FSSPEC_SCHEMES))})")
        return output
    try:
        parts = urlsplit(output)
        parts.port  # noqa: B018 - parsing the port is what validates it
    except ValueError as exc:
        raise ConfigError(f"output={_redacted(output)!r} is not a valid URI ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in PYARROW_SCHEMES + FSSPEC_SCHEMES:
        allowed = ", ".join(s + "://" for s in (*PYARROW_SCHEMES, *FSSPEC_SCHEMES))
        raise ConfigError(f"output={output!r} uses the unknown storage scheme '{scheme}://'; "
                          f"allowed: an absolute path, {allowed}")
    if parts.password is not None or any(_SECRET_PARAM.search(k) for k, _ in parse_qsl(parts.query)):
        raise ConfigError(f"output={_redacted(output)!r} carries a credential; give it through the storage's "
                          "environment (e.g. AWS_ACCESS_KEY_ID) so it never reaches config.json or a log")
    if parts.fragment:
        raise ConfigError(f"output={output!r} has a '#' fragment, which no storage path allows")
    if scheme == "file" and (parts.netloc or not parts.path.startswith("/") or not parts.path.strip("/")):
        raise ConfigError(f"output={output!r}: a file:// URI needs an absolute path and no host, "
                          "e.g. file:///abs/folder")
    if scheme != "file" and not parts.netloc:
        raise ConfigError(f"output={output!r} names no bucket or host after '{scheme}://'")
    if ".." in parts.path.split("/"):
        raise ConfigError(f"output={output!r} contains '..'; give the folder itself")
    if scheme in FSSPEC_SCHEMES:
        _require_fsspec(output, scheme)
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), parts.query, ""))


def _require_fsspec(output: str, scheme: str) -> None:
    import fsspec

    try:
        fsspec.get_filesystem_class(scheme)
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"output={output!r} needs the fsspec file system for {scheme}://, which is not "
                          f"installed here ({first_line(exc)})") from None


def _redacted(uri: str) -> str:
    """``uri`` with any user-info and query masked, for an error message that must not leak a secret."""
    return re.sub(r"\?.*", "?***", re.sub(r"(://)[^/?#]*@", r"\1***@", uri))


def join_location(location: str, *names: str) -> str:
    """``location`` (a path or a URI) with ``names`` appended as path components; a URI keeps its query."""
    if not is_uri(location):
        return os.path.join(location, *names)
    parts = urlsplit(location)
    return urlunsplit(parts._replace(path="/".join([parts.path.rstrip("/"), *names])))


def open_filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow file system that holds ``location`` and the path inside it (s3/gs may ask the network)."""
    if not is_uri(location):
        return pafs.LocalFileSystem(), os.path.abspath(location)
    if urlsplit(location).scheme.lower() in PYARROW_SCHEMES:
        return pafs.FileSystem.from_uri(location)
    import fsspec.core

    fs, path = fsspec.core.url_to_fs(location)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


LOOKUP_RETRY_LIMIT_S = 15
"""How long the driver's own look at a ``gs://`` output before Ray starts retries: with no network or
no credentials the GCS client otherwise retries silently for minutes (an upload during a run keeps
the client's default patience)."""


def _for_lookup(location: str) -> str:
    """``location`` with a short retry limit where its client would retry for minutes (``gs://``)."""
    parts = urlsplit(location)
    if parts.scheme.lower() not in ("gs", "gcs") or any(k == "retry_limit_seconds" for k, _ in parse_qsl(parts.query)):
        return location
    query = "&".join(filter(None, [parts.query, f"retry_limit_seconds={LOOKUP_RETRY_LIMIT_S}"]))
    return urlunsplit(parts._replace(query=query))


def ray_train_storage(run_location: str) -> tuple[str, pafs.FileSystem | None]:
    """Ray Train's ``storage_path`` and ``storage_filesystem`` for a run: its ``.ray`` folder.

    Every node must reach it (Train checks that with a marker file), so it sits in the run folder:
    a path or a pyarrow URI goes as is, an fsspec URI as the wrapped file system and its path.
    """
    target = join_location(run_location, ".ray")
    if not is_uri(target) or urlsplit(target).scheme.lower() in PYARROW_SCHEMES:
        return target, None
    fs, path = open_filesystem(target)
    return path, fs


@dataclass(frozen=True)
class RunFolderInfo:
    """What the driver reads of one run folder to decide which run a rerun continues."""

    location: str
    """The folder: an absolute path, or a URI when the output is one."""
    config_mtime: float
    config: dict[str, Any]
    """``config.json``'s ``config``: the run's settings."""
    results: dict[str, Any]
    """``results.json``: how the run ended (status, final metrics, error); empty while it has not."""


def list_run_folders(output: str, prefix: str) -> list[RunFolderInfo]:
    """Folders in ``output`` named ``prefix...`` that hold a readable ``config.json``, local or remote.

    A storage that cannot be read (no such bucket, no credentials) is a ConfigError, raised before
    Ray starts; a missing output folder simply holds no runs.
    """
    try:
        fs, base = open_filesystem(_for_lookup(output))
        if fs.get_file_info(base).type != pafs.FileType.Directory:
            return []
        entries = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        found = []
        for entry in entries:
            if entry.type != pafs.FileType.Directory or not entry.base_name.startswith(prefix):
                continue
            config_file = f"{entry.path}/config.json"
            config = read_json(fs, config_file).get("config")
            if not isinstance(config, dict):
                continue
            mtime = fs.get_file_info(config_file).mtime
            found.append(RunFolderInfo(join_location(output, entry.base_name),
                                       mtime.timestamp() if mtime else 0.0, config,
                                       read_json(fs, f"{entry.path}/results.json")))
    except (OSError, pa.ArrowException) as exc:
        raise ConfigError(f"output={output!r} cannot be read ({first_line(exc)})") from None
    return found


def claim_run_location(output: str, name: str) -> str:
    """A new run folder at the storage URI ``output``, under a fresh id, created empty.

    Object stores have no exclusive mkdir, so the id is one no folder there has yet (two drivers
    starting a run of one name in the same second could still meet; a local output cannot).
    """
    try:
        fs, base = open_filesystem(_for_lookup(output))
        while True:
            run_id = generate_experiment_id(name)
            if fs.get_file_info(f"{base}/{run_id}").type == pafs.FileType.NotFound:
                fs.create_dir(f"{base}/{run_id}")
                return join_location(output, run_id)
    except (OSError, pa.ArrowException) as exc:
        raise ConfigError(f"output={output!r} cannot be written ({first_line(exc)})") from None


def read_json(fs: pafs.FileSystem, path: str) -> dict[str, Any]:
    """A JSON object file in ``fs``, ``{}`` when it is missing, unreadable or not an object: the run
    folders' records are read by whoever looks, while their writer may be replacing them."""
    try:
        with fs.open_input_stream(path) as fh:
            data = json.loads(fh.read().decode("utf-8"))
    except (OSError, ValueError, pa.ArrowException):
        return {}
    return data if isinstance(data, dict) else {}


def first_line(exc: BaseException) -> str:
    """The first line of a storage error (pyarrow's carry the request details after it)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
