"""Tokens for training: an on-disk token cache, the 90/10 split, and seeded, resumable batches.

A corpus is tokenised once into ``cache_dir/<key>/`` (tokenizer.json with its merges, tokens.bin as a
flat uint16/uint32 array, meta.json as the commit marker) and then memory-mapped, so every run, rank
and Ray worker reads the same ids without re-tokenising (the original re-streamed FineWeb into a
500 M-element Python list on every run). A batch is a pure function of (seed, step, rank, world_size)
(D6), sampled without replacement within an epoch, so a resumed run sees exactly the batches of an
uninterrupted one; validation uses fixed windows (D5).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spectral_gpt.config import GPT2_VOCAB, ConfigError
from spectral_gpt.corpora import FINEWEB_CONFIG, FINEWEB_EDU, load_corpus, stream_fineweb_records
from spectral_gpt.tokenizer import DEFAULT_VOCAB_SIZE, MIN_VOCAB_SIZE, Tokenizer

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
"""Version of the cache layout; a cache written in another format is rebuilt, never misread."""
TOKENIZER_FILE, TOKENS_FILE, META_FILE = "tokenizer.json", "tokens.bin", "meta.json"
"""The files of one cache folder; meta.json is written last and marks the folder complete."""
PIECE_CHARS = 1 << 16
"""Longest text handed to the tokenizer at once: long documents are cut (after a newline) so the
Rust side can work on pieces in parallel."""
BATCH_CHARS = 1 << 20
"""Characters tokenised per batch call: bounds memory on big corpora."""
FINEWEB_DEFAULT_TOKENS = 500_000_000
"""FineWeb-Edu token budget when none is given: the original's 500 M-token pool (spec 3.9)."""


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype that holds every id: halves the cache and page cache for V <= 65536."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def split_point(total_tokens: int) -> int:
    """First validation index: the first 90% of the stream trains, the last 10% validates (spec 3.9)."""
    return total_tokens * 9 // 10


def encode_documents(documents: Iterable[str], tokenizer: Tokenizer,
                     max_tokens: int | None = None) -> Iterator[np.ndarray]:
    """Ids of the documents joined by EOT, as a stream of arrays of bounded size.

    Stops after exactly ``max_tokens`` ids (the last document cut short) without reading further
    documents, so a streamed corpus is read only as far as its token budget.
    """
    dtype = token_dtype(tokenizer.vocab_size)
    eot = [tokenizer.eot_id]
    remaining = max_tokens
    first = True
    for batch in _piece_batches(documents):
        ids = tokenizer.encode_batch([piece for _, piece in batch])
        parts: list[list[int]] = []
        for (starts_document, _), piece_ids in zip(batch, ids, strict=True):
            if starts_document and not first:
                parts.append(eot)
            first = False
            parts.append(piece_ids)
        chunk = np.concatenate([np.asarray(p, dtype=dtype) for p in parts])
        if remaining is not None:
            chunk = chunk[:remaining]
            remaining -= len(chunk)
        if len(chunk):
            yield chunk
        if remaining == 0:
            return


def record_texts(records: Iterable[Mapping[str, Any]]) -> Iterator[str]:
    """The ``text`` field of each record of a streamed dataset such as FineWeb-Edu."""
    for record in records:
        yield record["text"]


def _pieces(documents: Iterable[str]) -> Iterator[tuple[bool, str]]:
    """(starts a document, text) pieces of at most PIECE_CHARS, cut after a newline where possible."""
    for doc in documents:
        start, starts_document = 0, True
        while len(doc) - start > PIECE_CHARS:
            cut = doc.rfind("\n", start, start + PIECE_CHARS) + 1
            if cut <= start:
                cut = start + PIECE_CHARS
            yield starts_document, doc[start:cut]
            start, starts_document = cut, False
        yield starts_document, doc[start:]


def _piece_batches(documents: Iterable[str]) -> Iterator[list[tuple[bool, str]]]:
    batch: list[tuple[bool, str]] = []
    chars = 0
    for item in _pieces(documents):
        batch.append(item)
        chars += len(item[1])
        if chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


class TokenDataset:
    """A tokenised corpus on disk: its tokenizer, its memory-mapped ids and the train/val split."""

    def __init__(self, directory: Path, tokenizer: Tokenizer, tokens: np.ndarray,
                 meta: dict[str, Any]) -> None:
        self.directory = directory
        """The committed cache folder this dataset reads from."""
        self.tokenizer = tokenizer
        self.tokens = tokens
        """All ids in stream order (read-only memmap)."""
        self.meta = meta
        n_train = split_point(len(tokens))
        self.train = tokens[:n_train]
        """First 90% of the stream."""
        self.val = tokens[n_train:]
        """Last 10% of the stream, never trained on."""

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary: the model's embedding and output width."""
        return self.tokenizer.vocab_size

    def info(self) -> dict[str, Any]:
        """What a run record needs to say which data it trained on."""
        return {
            "dataset": self.meta["dataset"],
            "sha256": self.meta["sha256"],
            "vocab_size": self.vocab_size,
            "total_tokens": len(self.tokens),
            "train_tokens": len(self.train),
            "val_tokens": len(self.val),
            "cache_dir": str(self.directory),
        }

    @classmethod
    def prepare(cls, name_or_path: str | Path, cache_dir: str | Path, vocab_size: int | None = None,
                *, max_tokens: int | None = None) -> "TokenDataset":
        """The cached token dataset of a corpus, building it first if no valid cache exists.

        ``vocab_size`` defaults to 1024 for trained tokenizers; fineweb-edu uses GPT-2 (50257) and reads
        ``max_tokens`` ids (default 500 M). Safe when several processes prepare the same cache at once:
        each builds in a private folder and one atomic rename commits; the others use the winner's.
        """
        cache_dir = Path(cache_dir)
        name = str(name_or_path)
        if name == FINEWEB_EDU:
            return cls._prepare_fineweb(cache_dir, vocab_size, max_tokens)
        if max_tokens is not None:
            raise ConfigError(f"max_tokens={max_tokens!r} applies only to the streamed dataset "
                              f"{FINEWEB_EDU!r}; {name!r} is always used whole")
        vocab = DEFAULT_VOCAB_SIZE if vocab_size is None else vocab_size
        if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < MIN_VOCAB_SIZE:
            raise ConfigError(f"vocab_size={vocab!r} must be an integer >= {MIN_VOCAB_SIZE}")
        corpus = load_corpus(name, cache_dir)
        directory = cache_dir / f"{corpus.sha256[:16]}-v{vocab}"
        found = _try_open(directory, corpus.sha256)
        if found is not None:
            return found

        def build(tmp: Path) -> None:
            tokenizer = Tokenizer.train((piece for _, piece in _pieces(corpus.documents())), vocab)
            if tokenizer.vocab_size < vocab:
                logger.warning("corpus %s supports only %d of the %d tokens asked for", corpus.name,
                               tokenizer.vocab_size, vocab)
            _write_cache(tmp, tokenizer, encode_documents(corpus.documents(), tokenizer),
                         dataset=corpus.name, sha256=corpus.sha256, requested_vocab=vocab)

        return _build_and_commit(directory, build)

    @classmethod
    def _prepare_fineweb(cls, cache_dir: Path, vocab_size: int | None,
                         max_tokens: int | None) -> "TokenDataset":
        if vocab_size not in (None, GPT2_VOCAB):
            raise ConfigError(f"vocab_size={vocab_size!r}: {FINEWEB_EDU!r} uses the GPT-2 tokenizer; "
                              f"pass vocab_size={GPT2_VOCAB} or leave it unset")
        budget = FINEWEB_DEFAULT_TOKENS if max_tokens is None else max_tokens
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < 2:
            raise ConfigError(f"max_tokens={max_tokens!r} must be an integer >= 2")
        directory = cache_dir / f"{FINEWEB_EDU}-{FINEWEB_CONFIG}-gpt2-{budget}"
        found = _try_open(directory, None)
        if found is not None:
            return found
        records = stream_fineweb_records()
        tokenizer = Tokenizer.pretrained_gpt2()

        def build(tmp: Path) -> None:
            _write_cache(tmp, tokenizer, encode_documents(record_texts(records), tokenizer, budget),
                         dataset=FINEWEB_EDU, sha256=None, requested_vocab=GPT2_VOCAB)

        return _build_and_commit(directory, build)

    @classmethod
    def open(cls, directory: str | Path) -> "TokenDataset":
        """A committed cache folder (e.g. handed to a worker), checked against its meta.json."""
        directory = Path(directory)
        try:
            meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"{str(directory)!r} is not a committed token cache (no {META_FILE}); "
                              "create one with TokenDataset.prepare") from exc
        except (OSError, ValueError) as exc:
            raise ConfigError(f"token cache {str(directory)!r} has an unreadable {META_FILE} "
                              f"({exc})") from exc
        try:
            if meta["format"] != CACHE_FORMAT:
                raise ValueError(f"format {meta['format']!r}, expected {CACHE_FORMAT}")
            count, dtype = int(meta["count"]), np.dtype(meta["dtype"])
            tokenizer = Tokenizer.load(directory / TOKENIZER_FILE)
            if tokenizer.vocab_size != meta["vocab_size"] or dtype != token_dtype(tokenizer.vocab_size):
                raise ValueError(f"tokenizer has {tokenizer.vocab_size} ids, meta says "
                                 f"{meta['vocab_size']} ({dtype})")
            size = (directory / TOKENS_FILE).stat().st_size
            if count < 1 or size != count * dtype.itemsize:
                raise ValueError(f"{TOKENS_FILE} has {size} bytes, meta says {count} x {dtype}")
        except (KeyError, TypeError, ValueError, OSError) as exc:
            raise ConfigError(f"token cache {str(directory)!r} is corrupt ({exc})") from exc
        tokens = np.memmap(directory / TOKENS_FILE, dtype=dtype, mode="r", shape=(count,))
        return cls(directory, tokenizer, tokens, meta)


def _try_open(directory: Path, sha256: str | None) -> TokenDataset | None:
    """The cache at ``directory`` if it is committed, intact and of this corpus; else None (rebuild)."""
    if not directory.exists():
        return None
    try:
        dataset = TokenDataset.open(directory)
    except ConfigError as exc:
        logger.warning("ignoring token cache: %s", exc)
        return None
    if sha256 is not None and dataset.meta.get("sha256") != sha256:
        logger.warning("ignoring token cache %s: built from another corpus", directory)
        return None
    return dataset


def _write_cache(tmp: Path, tokenizer: Tokenizer, chunks: Iterable[np.ndarray], *, dataset: str,
                 sha256: str | None, requested_vocab: int) -> None:
    """Fill a private folder; meta.json goes last because its presence means "complete"."""
    tokenizer.save(tmp / TOKENIZER_FILE)
    dtype = token_dtype(tokenizer.vocab_size)
    digest, count = hashlib.sha256(), 0
    with open(tmp / TOKENS_FILE, "wb") as f:
        for chunk in chunks:
            data = chunk.astype(dtype, copy=False).tobytes()
            f.write(data)
            digest.update(data)
            count += len(chunk)
        f.flush()
        os.fsync(f.fileno())
    meta = {
        "format": CACHE_FORMAT,
        "dataset": dataset,
        "sha256": sha256 if sha256 is not None else digest.hexdigest(),
        "sha256_of": "text" if sha256 is not None else "tokens",
        "tokens_sha256": digest.hexdigest(),
        "vocab_size": tokenizer.vocab_size,
        "requested_vocab_size": requested_vocab,
        "dtype": dtype.name,
        "count": count,
    }
    part = tmp / f".{META_FILE}.tmp"
    with open(part, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, tmp / META_FILE)


def _build_and_commit(directory: Path, build: Callable[[Path], None]) -> TokenDataset:
    """Run ``build`` into a private folder, then commit it with one atomic directory rename."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    start = time.perf_counter()
    try:
        build(tmp)
        _commit(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    dataset = TokenDataset.open(directory)
    logger.info("token cache %s ready: %d tokens in %.1f s", directory, len(dataset.tokens),
                time.perf_counter() - start)
    return dataset


def _commit(tmp: Path, directory: Path) -> None:
    """Rename ``tmp`` to ``directory``; a valid cache already there wins, a broken one is moved away."""
    for _ in range(3):
        try:
            os.rename(tmp, directory)
            return
        except OSError:
            if _try_open(directory, None) is not None:
                return  # another process committed the same cache first
        stale = directory.with_name(f".{directory.name}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(directory, stale)
        except FileNotFoundError:
            continue
        shutil.rmtree(stale, ignore_errors=True)
    raise RuntimeError(f"could not commit the token cache {directory}: it keeps changing underneath")


def _check_int(field: str, value: Any, minimum: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{field}={value!r} must be an integer >= {minimum}")


def _windows(tokens: np.ndarray, starts: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) for windows of block_size + 1 ids at ``starts``: y is x shifted left by one."""
    window = np.asarray(tokens[starts[:, None] + np.arange(block_size + 1)], dtype=np.int64)
    window = torch.from_numpy(window)
    return window[:, :-1].contiguous(), window[:, 1:].contiguous()


class BatchSampler:
    """Training batches as a pure function of (seed, step, rank, world_size), without replacement.

    The split is cut into ``windows_per_epoch`` non-overlapping windows of block_size + 1 ids; epoch e
    visits them in a permutation drawn from (seed, e), offset by a shift drawn from the same generator
    so that window boundaries move between epochs. Global window g = step * batch_size + i lives in
    epoch g // windows_per_epoch; rank r takes rows [r*b, (r+1)*b) of the step's global batch, so the
    ranks' rows are disjoint and together are exactly the single-process batch. Nothing is carried
    between calls except a cache of the current epochs' permutations: resume needs only the step.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int) -> None:
        _check_int("block_size", block_size, 1)
        _check_int("batch_size", batch_size, 1)
        _check_int("seed", seed, 0)
        n = len(tokens)
        if n < block_size + 1:
            raise ConfigError(f"block_size={block_size} is larger than the data ({n:,} tokens); it needs at "
                              "least block_size + 1 tokens: use a smaller block_size or a bigger corpus")
        full_shift = (n - block_size) // block_size
        windows = full_shift if full_shift >= batch_size else (n - 1) // block_size
        if windows < batch_size:
            raise ConfigError(f"block_size={block_size} is larger than the data ({n:,} tokens) allows for "
                              f"batch_size={batch_size}: only {windows} windows of {block_size + 1} "
                              "tokens fit")
        self.tokens, self.block_size, self.batch_size, self.seed = tokens, block_size, batch_size, seed
        self.windows_per_epoch = windows
        """Distinct windows visited once each per epoch."""
        self._max_shift = min(block_size - 1, n - 1 - windows * block_size)
        self._epochs: dict[int, tuple[np.ndarray, int]] = {}

    def epoch(self, step: int) -> float:
        """Passes over the training split completed before ``step``: the honest 'tokens seen' unit."""
        return step * self.batch_size / self.windows_per_epoch

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows of the global batch of ``step``: int64 (x, y), batch_size // world_size each."""
        _check_int("step", step, 0)
        _check_int("world_size", world_size, 1)
        _check_int("rank", rank, 0)
        if rank >= world_size:
            raise ConfigError(f"rank={rank!r} must be an integer in [0, world_size={world_size})")
        if self.batch_size % world_size:
            raise ConfigError(f"batch_size={self.batch_size} is not divisible by world_size={world_size}; "
                              "pick a global batch that is a multiple of the number of workers")
        rows = self.batch_size // world_size
        g = step * self.batch_size + rank * rows + np.arange(rows, dtype=np.int64)
        epochs, positions = np.divmod(g, self.windows_per_epoch)
        starts = np.empty(rows, dtype=np.int64)
        for e in np.unique(epochs):
            order, shift = self._epoch_order(int(e))
            here = epochs == e
            starts[here] = shift + order[positions[here]] * self.block_size
        return _windows(self.tokens, starts, self.block_size)

    def _epoch_order(self, epoch: int) -> tuple[np.ndarray, int]:
        if epoch not in self._epochs:
            state = np.random.SeedSequence([self.seed, epoch]).generate_state(1, dtype=np.uint64)[0]
            gen = torch.Generator().manual_seed(int(state) & (2**63 - 1))
            order = torch.randperm(self.windows_per_epoch, generator=gen).numpy()
            shift = int(torch.randint(0, self._max_shift + 1, (1,), generator=gen))
            if len(self._epochs) >= 2:
                del self._epochs[min(self._epochs)]
            self._epochs[epoch] = (order, shift)
        return self._epochs[epoch]


def validation_batches(tokens: np.ndarray, block_size: int, batch_size: int,
                       n_batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed held-out batches, the same at every evaluation (D5): windows evenly spaced over the split.

    No seed: the windows depend only on the split and the shapes. A split too short for ``n_batches``
    gives fewer batches (at least one) and logs it; shorter than one batch is an error.
    """
    _check_int("block_size", block_size, 1)
    _check_int("batch_size", batch_size, 1)
    _check_int("n_batches", n_batches, 1)
    n = len(tokens)
    fit = (n - 1) // block_size if n > block_size else 0
    if fit < batch_size:
        raise ConfigError(f"block_size={block_size} is larger than the validation data ({n:,} tokens) allows "
                          f"for batch_size={batch_size}: only {fit} windows of {block_size + 1} tokens fit")
    count = min(n_batches, fit // batch_size)
    if count < n_batches:
        logger.warning("validation split (%d tokens) holds %d of the %d batches asked for",
                       n, count, n_batches)
    starts = np.linspace(0, n - block_size - 1, count * batch_size).round().astype(np.int64)
    x, y = _windows(tokens, starts, block_size)
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]

