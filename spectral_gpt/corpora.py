"""Where the training text comes from: named corpora and local files, each a checked, hashed text.

``python-docs`` is the offline default (D8): the English prose of CPython's documentation topics, which
ships with every Python, so a fresh clone trains without a network. ``shakespeare`` is downloaded once and
checked against a known checksum (the original fetched it at run time over HTTP unchecked, and its newest
loader crashed, B10). ``fineweb-edu`` is streamed by token budget through the optional ``datasets``
package, so it is opened here but tokenised in :mod:`spectral_gpt.data`. Anything else is a path.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spectral_gpt.config import ConfigError
from spectral_gpt.tokenizer import EOT

PYTHON_DOCS = "python-docs"
SHAKESPEARE = "shakespeare"
FINEWEB_EDU = "fineweb-edu"
DATASETS = (PYTHON_DOCS, SHAKESPEARE, FINEWEB_EDU)
"""Dataset names accepted besides a path to a local UTF-8 text file."""

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
"""The one place TinyShakespeare is fetched from (once; then it is read from the cache)."""
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
"""sha256 of the file's only version in karpathy/char-rnn (git blob 7dcb3a2d, the first commit)."""
SHAKESPEARE_BYTES = 1_115_394
"""Size of that file; checked before the hash so a truncated download gets a plain message."""
DOWNLOAD_TIMEOUT_S = 20.0
"""Seconds before an unanswered download counts as offline, so a run fails fast instead of hanging."""

FINEWEB_HUB_ID = "HuggingFaceFW/fineweb-edu"
FINEWEB_CONFIG = "sample-10BT"
"""The FineWeb-Edu subset the original trained on (spec 3.9)."""


@dataclass(frozen=True)
class Corpus:
    """One training text and its identity: the sha256 keys the token cache and goes in run records."""

    name: str
    """Dataset name, or the absolute path of a local file."""
    text: str
    """The whole text; documents are separated by the EOT string."""
    sha256: str
    """Hex sha256 of ``text`` encoded as UTF-8."""

    def documents(self) -> Iterator[str]:
        """The documents, so they can be tokenised one at a time with EOT ids between them."""
        return iter(self.text.split(EOT))


def load_corpus(name_or_path: str | Path, cache_dir: str | Path) -> Corpus:
    """The text corpus called ``name_or_path``: a dataset name, or a path to a UTF-8 text file.

    ``cache_dir`` holds one-time downloads. ``fineweb-edu`` is not a single text; it is refused here
    with a pointer to ``TokenDataset.prepare``, which streams it by token budget.
    """
    name = str(name_or_path)
    if name == PYTHON_DOCS:
        return _python_docs()
    if name == SHAKESPEARE:
        return _shakespeare(Path(cache_dir))
    if name == FINEWEB_EDU:
        raise ConfigError(f"dataset {FINEWEB_EDU!r} is streamed by token budget, not loaded as one text; "
                          f"use TokenDataset.prepare({FINEWEB_EDU!r}, cache_dir, max_tokens=...)")
    return _local_file(name)


def _corpus(name: str, text: str) -> Corpus:
    return Corpus(name=name, text=text, sha256=hashlib.sha256(text.encode("utf-8")).hexdigest())


def _python_docs() -> Corpus:
    """CPython's documentation topics, sorted by key; the text differs between Python minor versions."""
    try:
        from pydoc_data.topics import topics
    except ImportError as exc:
        raise ConfigError(f"dataset {PYTHON_DOCS!r} needs the standard-library module pydoc_data, which "
                          "this Python lacks; pick 'shakespeare' or a local text file") from exc
    return _corpus(PYTHON_DOCS, EOT.join(topics[key] for key in sorted(topics)))


def _local_file(name: str) -> Corpus:
    path = Path(name).expanduser()
    try:
        found = path.exists()
    except OSError as exc:  # a name longer than the file system allows, say
        raise ConfigError(f"dataset file {name!r} cannot be opened ({exc.strerror or exc})") from None
    if not found:
        if os.sep not in name and "." not in name:
            raise ConfigError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}, "
                              "or a path to a UTF-8 text file")
        raise ConfigError(f"dataset file {name!r} does not exist; expected a path to a UTF-8 text file "
                          f"or one of: {', '.join(DATASETS)}")
    if not path.is_file():
        raise ConfigError(f"dataset path {name!r} is not a regular file; expected a UTF-8 text file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"dataset file {name!r} is not UTF-8 text (invalid byte at offset {exc.start}); "
                          "expected a UTF-8 text file") from exc
    if not text.strip():
        raise ConfigError(f"dataset file {name!r} is empty; expected a UTF-8 text file with some text")
    return _corpus(str(path.resolve()), text)


def checksum_problem(data: bytes, expected_sha256: str, expected_bytes: int) -> str | None:
    """What is wrong with ``data`` against its known size and sha256, or None if it is the right file."""
    if len(data) != expected_bytes:
        return f"has {len(data):,} bytes, expected {expected_bytes:,}"
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        return f"has sha256 {actual}, expected {expected_sha256}"
    return None


def shakespeare_path(cache_dir: str | Path) -> Path:
    """Where the TinyShakespeare download lives, so users can place the file by hand when offline."""
    return Path(cache_dir) / "downloads" / "tinyshakespeare.txt"


def _shakespeare(cache_dir: Path) -> Corpus:
    path = shakespeare_path(cache_dir)
    if not path.exists():
        download_verified(SHAKESPEARE_URL, path, SHAKESPEARE_SHA256, SHAKESPEARE_BYTES,
                          dataset=SHAKESPEARE)
    data = path.read_bytes()
    problem = checksum_problem(data, SHAKESPEARE_SHA256, SHAKESPEARE_BYTES)
    if problem:
        raise ConfigError(f"dataset {SHAKESPEARE!r}: the cached file {str(path)!r} {problem}; delete it "
                          f"to download again or place the right file from {SHAKESPEARE_URL}")
    return _corpus(SHAKESPEARE, data.decode("utf-8"))


def download_verified(url: str, dest: Path, sha256: str, size: int, *, dataset: str,
                      timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Fetch ``url`` into ``dest`` only if it has the expected size and sha256; atomic, so no half file."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = response.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConfigError(f"dataset {dataset!r} needs a one-time download from {url} and the network is "
                          f"unreachable ({reason}); place the file at {str(dest)!r} or pick "
                          f"{PYTHON_DOCS!r} or a local file") from exc
    problem = checksum_problem(data, sha256, size)
    if problem:
        raise ConfigError(f"dataset {dataset!r}: the download from {url} {problem}; refusing to use it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def stream_fineweb_records() -> Iterable[Mapping[str, Any]]:
    """FineWeb-Edu documents in stream order, each a mapping with a ``text`` field; nothing downloaded
    up front, so a token budget decides how much is read."""
    try:
        import datasets  # optional extra: imported only when fineweb-edu is asked for
    except ImportError as exc:
        raise ConfigError(f"dataset {FINEWEB_EDU!r} needs the optional package 'datasets'; "
                          "install spectral-gpt[hf] (pip install 'spectral-gpt[hf]')") from exc
    try:
        return datasets.load_dataset(FINEWEB_HUB_ID, name=FINEWEB_CONFIG, split="train", streaming=True)
    except Exception as exc:  # hub/network failures surface as assorted exception types
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"dataset {FINEWEB_EDU!r} could not be opened from the Hugging Face Hub "
                          f"({FINEWEB_HUB_ID}, {FINEWEB_CONFIG}): {reason}") from exc
