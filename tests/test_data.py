"""Corpora, the on-disk token cache, the 90/10 split, the seeded sampler and the validation windows."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from spectral_gpt.config import ConfigError
from spectral_gpt.corpora import (
    DATASETS,
    SHAKESPEARE_BYTES,
    SHAKESPEARE_SHA256,
    SHAKESPEARE_URL,
    checksum_problem,
    download_verified,
    load_corpus,
    shakespeare_path,
)
from spectral_gpt.data import (
    META_FILE,
    PIECE_CHARS,
    TOKENIZER_FILE,
    TOKENS_FILE,
    BatchSampler,
    TokenDataset,
    _commit,
    _write_cache,
    encode_documents,
    record_texts,
    split_point,
    validation_batches,
)
from spectral_gpt.tokenizer import EOT

# ----------------------------------------------------------------------------------------- corpora


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def docs(cache: Path) -> TokenDataset:
    return TokenDataset.prepare("python-docs", cache)


def test_python_docs_is_the_sorted_pydoc_topics(cache: Path) -> None:
    from pydoc_data.topics import topics

    corpus = load_corpus("python-docs", cache)
    assert corpus.name == "python-docs"
    assert list(corpus.documents()) == [topics[k] for k in sorted(topics)]
    assert len(corpus.text.encode("utf-8")) > 400_000
    assert corpus.sha256 == hashlib.sha256(corpus.text.encode("utf-8")).hexdigest()


def test_local_file_is_read_exactly(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes("crlf\r\nünïcode 🎉\n".encode())
    corpus = load_corpus(str(path), tmp_path)
    assert corpus.text == "crlf\r\nünïcode 🎉\n"
    assert corpus.name == str(path.resolve())
    assert corpus.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_local_file_mistakes_are_config_errors(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 ol\xe9".encode("latin-1"))
    cases = {
        str(tmp_path / "missing.txt"): "does not exist",
        str(tmp_path): "not a regular file",
        str(tmp_path / "empty.txt"): "is empty",
        str(tmp_path / "latin1.txt"): "not UTF-8 text \\(invalid byte at offset 3\\)",
    }
    for bad, reason in cases.items():
        with pytest.raises(ConfigError, match=reason) as info:
            load_corpus(bad, tmp_path)
        assert repr(bad) in str(info.value) and "\n" not in str(info.value)


def test_unknown_dataset_name_lists_the_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown dataset 'shakespear'") as info:
        load_corpus("shakespear", tmp_path)
    assert all(name in str(info.value) for name in DATASETS)


def test_checksum_problem() -> None:
    data = b"First Citizen:\nBefore we proceed any further, hear me speak.\n"
    good = hashlib.sha256(data).hexdigest()
    assert checksum_problem(data, good, len(data)) is None
    short = checksum_problem(data[:-1], good, len(data))
    assert short == f"has {len(data) - 1:,} bytes, expected {len(data):,}"
    changed = data.replace(b"speak", b"SPEAK")
    problem = checksum_problem(changed, good, len(data))
    assert problem is not None and hashlib.sha256(changed).hexdigest() in problem and good in problem


def test_shakespeare_rejects_a_placed_file_with_the_wrong_checksum(tmp_path: Path) -> None:
    path = shakespeare_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x" * SHAKESPEARE_BYTES)  # right length, wrong content
    with pytest.raises(ConfigError, match="has sha256 .*, expected " + SHAKESPEARE_SHA256) as info:
        load_corpus("shakespeare", tmp_path)
    assert str(path) in str(info.value)


def test_shakespeare_offline_error_or_verified_download(tmp_path: Path) -> None:
    try:
        corpus = load_corpus("shakespeare", tmp_path)
    except ConfigError as exc:  # the normal case here: no network but package registries
        message = str(exc)
        assert SHAKESPEARE_URL in message and "network is unreachable" in message
        assert str(shakespeare_path(tmp_path)) in message and "python-docs" in message
        assert not shakespeare_path(tmp_path).exists()
    else:
        assert corpus.sha256 == SHAKESPEARE_SHA256
        assert shakespeare_path(tmp_path).stat().st_size == SHAKESPEARE_BYTES


def test_download_from_an_unreachable_host_leaves_no_file(tmp_path: Path) -> None:
    dest = tmp_path / "downloads" / "file.txt"
    with pytest.raises(ConfigError, match="needs a one-time download from http://127.0.0.1:9/file.txt"):
        download_verified("http://127.0.0.1:9/file.txt", dest, "0" * 64, 10, dataset="demo", timeout=5)
    assert not dest.exists()


def test_fineweb_is_not_a_single_text(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TokenDataset.prepare"):
        load_corpus("fineweb-edu", tmp_path)
    with pytest.raises(ConfigError, match="vocab_size=1024"):
        TokenDataset.prepare("fineweb-edu", tmp_path, 1024)


def test_fineweb_without_datasets_says_what_to_install(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail, installed or not
    with pytest.raises(ConfigError, match=r"install spectral-gpt\[hf\]"):
        TokenDataset.prepare("fineweb-edu", tmp_path, max_tokens=1000)


# ----------------------------------------------------------------------------------------- encoding


def test_records_are_joined_with_eot_and_cut_at_the_budget(docs: TokenDataset) -> None:
    tok = docs.tokenizer
    records = [{"text": "The first document."}, {"text": "A second one\nwith two lines."},
               {"text": "Third: ünïcode 🎉"}]
    joined = np.concatenate(list(encode_documents(record_texts(records), tok)))
    expected = (tok.encode(records[0]["text"]) + [tok.eot_id] + tok.encode(records[1]["text"])
                + [tok.eot_id] + tok.encode(records[2]["text"]))
    assert joined.tolist() == expected and joined.dtype == np.uint16
    assert tok.decode(joined) == EOT.join(r["text"] for r in records)
    for budget in (1, 5, len(expected) - 1, len(expected), len(expected) + 10):
        cut = np.concatenate(list(encode_documents(record_texts(records), tok, budget)))
        assert cut.tolist() == expected[:budget]


def test_long_documents_are_split_but_decode_exactly(docs: TokenDataset) -> None:
    tok = docs.tokenizer
    long_doc = "".join(f"line {i}: some words to encode, again and again\n" for i in range(5000))
    assert len(long_doc) > 2 * PIECE_CHARS
    documents = ["short one", long_doc, "x" * (PIECE_CHARS + 10), "end"]
    ids = np.concatenate(list(encode_documents(documents, tok)))
    assert tok.decode(ids) == EOT.join(documents)
    assert int((ids == tok.eot_id).sum()) == len(documents) - 1


# ----------------------------------------------------------------------------------------- token cache


def test_prepared_dataset_split_and_info(docs: TokenDataset, cache: Path) -> None:
    corpus = load_corpus("python-docs", cache)
    assert docs.tokenizer.decode(docs.tokens) == corpus.text
    assert docs.tokens.dtype == np.uint16 and not docs.tokens.flags.writeable
    info = docs.info()
    assert info["dataset"] == "python-docs" and info["sha256"] == corpus.sha256
    assert info["vocab_size"] == docs.vocab_size == 1024
    assert info["train_tokens"] == split_point(info["total_tokens"]) == len(docs.train)
    assert info["train_tokens"] + info["val_tokens"] == info["total_tokens"] == len(docs.tokens)
    assert np.array_equal(np.concatenate([docs.train, docs.val]), docs.tokens)
    assert Path(info["cache_dir"]).parent == cache
    meta = json.loads((docs.directory / META_FILE).read_text())
    assert meta["count"] == len(docs.tokens) and meta["dtype"] == "uint16"
    assert meta["tokens_sha256"] == hashlib.sha256(np.asarray(docs.tokens).tobytes()).hexdigest()


def test_second_prepare_reuses_the_cache(docs: TokenDataset, cache: Path) -> None:
    before = {name: (docs.directory / name).stat() for name in (META_FILE, TOKENS_FILE, TOKENIZER_FILE)}
    again = TokenDataset.prepare("python-docs", cache)
    assert again.directory == docs.directory
    for name, stat in before.items():
        now = (again.directory / name).stat()
        assert (now.st_ino, now.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert sorted(p.name for p in cache.iterdir() if p.name != "downloads") == [docs.directory.name]


def _small_corpus(tmp_path: Path) -> Path:
    from pydoc_data.topics import topics

    path = tmp_path / "small.txt"
    path.write_text(topics["assert"] + topics["if"] + topics["while"], encoding="utf-8")
    return path


@pytest.mark.parametrize("damage", ["no meta", "short tokens", "bad tokenizer", "bad meta", "old format"])
def test_corrupt_cache_is_rebuilt(tmp_path: Path, damage: str) -> None:
    corpus = _small_corpus(tmp_path)
    first = TokenDataset.prepare(corpus, tmp_path / "cache", 300)
    good = np.array(first.tokens)
    directory = first.directory
    del first
    if damage == "no meta":
        (directory / META_FILE).unlink()
    elif damage == "short tokens":
        with open(directory / TOKENS_FILE, "r+b") as f:
            f.truncate(10)
    elif damage == "bad tokenizer":
        (directory / TOKENIZER_FILE).write_text("{}", encoding="utf-8")
    elif damage == "bad meta":
        (directory / META_FILE).write_text("{", encoding="utf-8")
    else:
        meta = json.loads((directory / META_FILE).read_text())
        (directory / META_FILE).write_text(json.dumps({**meta, "format": 0}), encoding="utf-8")
    with pytest.raises(ConfigError, match=str(directory.name)):
        TokenDataset.open(directory)
    rebuilt = TokenDataset.prepare(corpus, tmp_path / "cache", 300)
    assert rebuilt.directory == directory
    assert np.array_equal(np.asarray(rebuilt.tokens), good)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [directory.name]  # no temp/stale left


def test_losing_the_commit_race_keeps_the_winners_cache(tmp_path: Path) -> None:
    corpus = _small_corpus(tmp_path)
    winner = TokenDataset.prepare(corpus, tmp_path / "cache", 300)
    inode = (winner.directory / TOKENS_FILE).stat().st_ino
    loser = tmp_path / "cache" / ".loser"
    loser.mkdir()
    _write_cache(loser, winner.tokenizer, [np.asarray(winner.tokens)], dataset="x", sha256="y",
                 requested_vocab=300)
    _commit(loser, winner.directory)
    assert (winner.directory / TOKENS_FILE).stat().st_ino == inode
    assert loser.exists()  # left for the caller to remove; the committed folder is untouched


def test_two_processes_preparing_at_once_agree(tmp_path: Path) -> None:
    corpus = _small_corpus(tmp_path)
    script = ("import json, sys; from spectral_gpt.data import TokenDataset; "
              "d = TokenDataset.prepare(sys.argv[1], sys.argv[2], 300); "
              "print(json.dumps({**d.info(), 'tokens': d.meta['tokens_sha256']}))")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(corpus), str(tmp_path / "cache")],
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outputs[0] == outputs[1]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [Path(outputs[0]["cache_dir"]).name]
    assert TokenDataset.open(outputs[0]["cache_dir"]).meta["tokens_sha256"] == outputs[0]["tokens"]


def test_vocab_size_is_part_of_the_key(tmp_path: Path) -> None:
    corpus = _small_corpus(tmp_path)
    a = TokenDataset.prepare(corpus, tmp_path / "cache", 300)
    b = TokenDataset.prepare(corpus, tmp_path / "cache", 320)
    assert a.directory != b.directory and a.vocab_size == 300 and b.vocab_size == 320


def test_prepare_mistakes_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="vocab_size=100"):
        TokenDataset.prepare("python-docs", tmp_path, 100)
    with pytest.raises(ConfigError, match="max_tokens=5000"):
        TokenDataset.prepare("python-docs", tmp_path, max_tokens=5000)
    with pytest.raises(ConfigError, match="no meta.json"):
        TokenDataset.open(tmp_path)


# ----------------------------------------------------------------------------------------- sampler

N = 5000
TOKENS = np.arange(N, dtype=np.uint16)  # token value = position, so x[:, 0] is the window start


def test_batch_shapes_dtype_and_shift() -> None:
    x, y = BatchSampler(TOKENS, 32, 8, seed=1).batch(3)
    assert x.shape == y.shape == (8, 32) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1)  # y is x shifted by one position


def test_real_tokens_rows_are_spans_of_the_split(docs: TokenDataset) -> None:
    x, y = BatchSampler(docs.train, 64, 4, seed=0).batch(0)
    assert torch.equal(x[:, 1:], y[:, :-1])
    spans = np.lib.stride_tricks.sliding_window_view(np.asarray(docs.train), 65)
    for row in torch.cat([x, y[:, -1:]], dim=1).numpy():
        assert (spans == row).all(axis=1).any()


def test_batch_is_a_pure_function_of_seed_step_rank() -> None:
    a, b = BatchSampler(TOKENS, 32, 8, seed=7), BatchSampler(TOKENS, 32, 8, seed=7)
    a.batch(500)  # visiting far steps first must not change what step 3 returns
    assert torch.equal(a.batch(3)[0], b.batch(3)[0])
    assert not torch.equal(a.batch(3)[0], a.batch(4)[0])
    assert not torch.equal(a.batch(3)[0], BatchSampler(TOKENS, 32, 8, seed=8).batch(3)[0])


def test_ranks_are_disjoint_and_their_union_is_the_single_process_batch() -> None:
    sampler = BatchSampler(TOKENS, 16, 12, seed=3)
    for step in (0, 5, 77):
        single = sampler.batch(step)[0]
        parts = [sampler.batch(step, rank, 4)[0] for rank in range(4)]
        assert all(p.shape == (3, 16) for p in parts)
        assert torch.equal(torch.cat(parts), single)
        starts = [set(p[:, 0].tolist()) for p in parts]
        assert all(starts[i].isdisjoint(starts[j]) for i in range(4) for j in range(i + 1, 4))


def test_each_epoch_visits_every_window_once_and_shifts_between_epochs() -> None:
    block, batch = 32, 7
    sampler = BatchSampler(TOKENS, block, batch, seed=11)
    windows = sampler.windows_per_epoch
    assert windows % batch != 0  # so some steps straddle two epochs
    steps = 4 * windows // batch + 1
    starts = torch.cat([sampler.batch(s)[0][:, 0] for s in range(steps)]).tolist()
    shifts = []
    for e in range(4):
        epoch = starts[e * windows:(e + 1) * windows]
        assert len(set(epoch)) == windows  # no window repeats within an epoch
        shift = min(epoch)
        assert sorted(epoch) == [shift + k * block for k in range(windows)]  # non-overlapping, all visited
        assert 0 <= shift < block and max(epoch) + block + 1 <= N
        shifts.append(shift)
    assert len(set(shifts)) > 1
    assert sampler.epoch(steps) == pytest.approx(steps * batch / windows)


def test_short_data_uses_the_slack_it_has() -> None:
    tokens = np.arange(33 * 4 + 1, dtype=np.uint16)  # exactly 4 windows of 33 at shift 0
    sampler = BatchSampler(tokens, 33, 4, seed=0)
    assert sampler.windows_per_epoch == 4
    for step in range(10):
        assert sorted(sampler.batch(step)[0][:, 0].tolist()) == [0, 33, 66, 99]


def test_sampler_mistakes_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"block_size=64 is larger than the data \(50 tokens\)"):
        BatchSampler(TOKENS[:50], 64, 1, seed=0)
    with pytest.raises(ConfigError, match=r"block_size=64 is larger than the data \(500 tokens\).*=16"):
        BatchSampler(TOKENS[:500], 64, 16, seed=0)
    sampler = BatchSampler(TOKENS, 16, 6, seed=0)
    with pytest.raises(ConfigError, match="batch_size=6 is not divisible by world_size=4"):
        sampler.batch(0, 0, 4)
    with pytest.raises(ConfigError, match="rank=2"):
        sampler.batch(0, 2, 2)
    with pytest.raises(ConfigError, match="step=-1"):
        sampler.batch(-1)
    with pytest.raises(ConfigError, match="block_size=0"):
        BatchSampler(TOKENS, 0, 4, seed=0)


# ----------------------------------------------------------------------------------------- validation


def test_validation_windows_are_fixed_spread_and_shifted() -> None:
    batches = validation_batches(TOKENS, 32, 4, 10)
    assert len(batches) == 10
    again = validation_batches(TOKENS, 32, 4, 10)
    for (x1, y1), (x2, y2) in zip(batches, again, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x.shape == (40, 32) and torch.equal(y, x + 1)
    starts = x[:, 0].tolist()
    assert starts[0] == 0 and starts[-1] == N - 33
    assert all(b - a >= 32 for a, b in zip(starts, starts[1:], strict=False))  # inputs never overlap


def test_short_validation_split_gives_fewer_batches_or_an_error() -> None:
    tokens = TOKENS[:32 * 9 + 1]  # 9 windows: two full batches of 4
    batches = validation_batches(tokens, 32, 4, 10)
    assert len(batches) == 2 and all(b[0].shape == (4, 32) for b in batches)
    with pytest.raises(ConfigError, match=r"block_size=32 is larger than the validation data \(100 tokens\)"):
        validation_batches(TOKENS[:100], 32, 4, 10)
    with pytest.raises(ConfigError, match="n_batches=0"):
        validation_batches(TOKENS, 32, 4, 0)
