"""Byte-level BPE tokenizer: trained on the corpus, saved with its merges, reloaded exactly.

The original reloaded only the vocabulary and dropped the merges, so every run after the first silently
trained on raw bytes (spec B11). Here the whole ``tokenizers`` JSON (model, merges, pre-tokenizer,
decoder, special tokens) is the saved form, and a loaded tokenizer encodes exactly as the trained one.
Byte-level means every string, in any script or with emoji, encodes and decodes back unchanged.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from spectral_gpt.config import ConfigError

EOT = "<|endoftext|>"
"""The end-of-text token that separates documents in the token stream (as in GPT-2)."""

DEFAULT_VOCAB_SIZE = 1024
"""Vocabulary of tokenizers trained on small corpora (D9): 256 bytes, the EOT token and 767 merges."""

MIN_VOCAB_SIZE = 257
"""The 256 byte symbols plus the end-of-text token: the smallest vocabulary that can encode anything."""

GPT2_HUB_ID = "gpt2"
"""Hugging Face Hub id of the GPT-2 BPE (vocab 50257) used for FineWeb-Edu (D9)."""


class Tokenizer:
    """Text <-> token ids for one corpus; the only place that knows the byte-level BPE details."""

    def __init__(self, backend: tokenizers.Tokenizer) -> None:
        eot_id = backend.token_to_id(EOT)
        if eot_id is None:
            raise ConfigError(f"tokenizer has no {EOT!r} token; every tokenizer here must define it")
        self._backend = backend
        self._eot_id: int = eot_id

    @classmethod
    def train(cls, text_or_iterator: str | Iterable[str],
              vocab_size: int = DEFAULT_VOCAB_SIZE) -> "Tokenizer":
        """Learn merges from the corpus itself so small corpora get a vocabulary that fits them.

        Deterministic: the same text and vocab_size give the same merges in any process. Occurrences of
        the EOT string separate training documents, so no merge ever spans two documents. A corpus too
        small to support ``vocab_size - 257`` merges yields a smaller vocabulary; read ``vocab_size``.
        """
        if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < MIN_VOCAB_SIZE:
            raise ConfigError(f"vocab_size={vocab_size!r} must be an integer >= {MIN_VOCAB_SIZE} "
                              "(256 bytes + the end-of-text token)")
        texts = [text_or_iterator] if isinstance(text_or_iterator, str) else text_or_iterator
        backend = tokenizers.Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        backend.train_from_iterator(_split_documents(texts), trainer=trainer)
        return cls(backend)

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        """Rebuild a saved tokenizer, merges included, so cached token ids stay meaningful (B11)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"tokenizer file {str(path)!r} does not exist; expected a tokenizer.json "
                              "written by Tokenizer.save")
        try:
            backend = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises plain Exception for any malformed file
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"tokenizer file {str(path)!r} is not a valid tokenizers JSON "
                              f"({reason})") from exc
        return cls(backend)

    @classmethod
    def pretrained_gpt2(cls) -> "Tokenizer":
        """The GPT-2 BPE that FineWeb-Edu runs use (D9); downloaded from the Hub, so needs the network."""
        try:
            backend = tokenizers.Tokenizer.from_pretrained(GPT2_HUB_ID)
        except Exception as exc:  # hub/network failures surface as assorted exception types
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"the GPT-2 tokenizer ({GPT2_HUB_ID!r} on the Hugging Face Hub) could not be "
                              f"downloaded ({reason}); fineweb-edu needs the network") from exc
        return cls(backend)

    def save(self, path: str | Path) -> None:
        """Write the full tokenizer (merges included) atomically, so a reader never sees half a file."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            tmp.write_text(self._backend.to_str(), encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def to_json(self) -> str:
        """The saved form as a string: lets callers hash or compare tokenizers without a file."""
        return self._backend.to_str()

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; an EOT string inside the text becomes the EOT id."""
        return self._backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``encode`` for many texts at once, in parallel inside the Rust library."""
        return [enc.ids for enc in self._backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``, keeping EOT tokens, so ``decode(encode(s)) == s`` for every string."""
        return self._backend.decode([int(i) for i in ids], skip_special_tokens=False)

    @property
    def vocab_size(self) -> int:
        """Number of ids (merges, bytes and EOT): the model's embedding and output width."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    @property
    def eot_id(self) -> int:
        """Id of the end-of-text token placed between documents."""
        return self._eot_id


def _split_documents(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        yield from text.split(EOT)
