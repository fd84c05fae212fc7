"""The byte-level BPE tokenizer: exact round trips, merges survive save/load (B11), deterministic training."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spectral_gpt.config import ConfigError
from spectral_gpt.corpora import load_corpus
from spectral_gpt.tokenizer import EOT, MIN_VOCAB_SIZE, Tokenizer

SAMPLES = [
    "",
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "  leading spaces, trailing spaces   ",
    "line one\nline two\r\nline three\n\n\ttabbed\n",
    "naïve café, Ærøskøbing, Straße, ĳ, ﬁ ligature, e\u0301 (combining accent)",
    "日本語のテキスト, 中文文本, 한국어, Ελληνικά, русский, עברית, العربية",
    "emoji 🎉🚀👩‍👩‍👧‍👦 and flags 🇫🇷🇯🇵, zero-width\u200bjoiner",
    f"two documents{EOT}joined by the end-of-text token",
    "\x00\x01 control bytes \x7f and a lone surrogate-free high plane 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    return load_corpus("python-docs", tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def trained(corpus) -> Tokenizer:
    return Tokenizer.train(corpus.text, 1024)


@pytest.fixture(scope="module")
def saved_path(trained: Tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    trained.save(path)
    return path


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip_is_exact(trained: Tokenizer, text: str) -> None:
    ids = trained.encode(text)
    assert all(0 <= i < trained.vocab_size for i in ids)
    assert trained.decode(ids) == text


def test_round_trip_of_the_whole_corpus_and_bpe_compresses(trained: Tokenizer, corpus) -> None:
    ids = trained.encode(corpus.text)
    assert trained.decode(ids) == corpus.text
    # Real merges, not raw bytes: well under one token per byte, and ids beyond the byte range used.
    assert len(ids) < 0.45 * len(corpus.text.encode("utf-8"))
    assert max(ids) > 900


def test_vocab_and_eot(trained: Tokenizer) -> None:
    assert trained.vocab_size == 1024
    assert trained.encode(EOT) == [trained.eot_id]
    assert trained.encode(f"a{EOT}b").count(trained.eot_id) == 1
    assert trained.decode([trained.eot_id]) == EOT


def test_loaded_tokenizer_encodes_identically_with_its_merges(trained, saved_path: Path, corpus) -> None:
    loaded = Tokenizer.load(saved_path)
    assert loaded.vocab_size == trained.vocab_size and loaded.eot_id == trained.eot_id
    assert loaded.encode(corpus.text) == trained.encode(corpus.text)  # spec B11: merges are reloaded
    for text in SAMPLES:
        assert loaded.encode(text) == trained.encode(text)
    saved = json.loads(saved_path.read_text(encoding="utf-8"))
    assert len(saved["model"]["merges"]) == 1024 - MIN_VOCAB_SIZE


def test_training_is_deterministic_across_processes(trained: Tokenizer, corpus) -> None:
    assert Tokenizer.train(corpus.text, 1024).to_json() == trained.to_json()
    script = ("import hashlib; from spectral_gpt.corpora import load_corpus; "
              "from spectral_gpt.tokenizer import Tokenizer; "
              "t = Tokenizer.train(load_corpus('python-docs', '.').text, 1024); "
              "print(hashlib.sha256(t.to_json().encode()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert out.stdout.strip() == hashlib.sha256(trained.to_json().encode()).hexdigest()


def test_training_documents_never_merge_across_eot() -> None:
    tok = Tokenizer.train([f"abab{EOT}abab"] * 50, 300)
    learned = json.loads(tok.to_json())["model"]["vocab"]
    assert not any("<|" in piece or "|>" in piece for piece in learned if piece != EOT)


def test_tiny_corpus_gives_a_smaller_vocab_that_still_round_trips() -> None:
    tok = Tokenizer.train("abc abc abd", 1024)
    assert MIN_VOCAB_SIZE <= tok.vocab_size < 1024
    for text in SAMPLES:
        assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("bad", [0, 256, 100, "1024", 512.0, True])
def test_bad_vocab_size_is_a_config_error(bad) -> None:
    with pytest.raises(ConfigError, match=rf"vocab_size={bad!r}"):
        Tokenizer.train("some text", bad)


def test_load_missing_or_garbage_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match="nope.json"):
        Tokenizer.load(missing)
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="garbage.json"):
        Tokenizer.load(garbage)


def test_failed_save_leaves_the_old_file_and_no_temp(trained, saved_path: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "tokenizer.json"
    target.write_text("old", encoding="utf-8")

    def fail(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        trained.save(target)
    monkeypatch.undo()
    assert target.read_text(encoding="utf-8") == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json"]
    trained.save(target)
    assert target.read_text(encoding="utf-8") == saved_path.read_text(encoding="utf-8")
