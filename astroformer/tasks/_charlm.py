"""Character-level language modelling: `CharCorpus` and the `CharLM` task."""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import ClassVar

import numpy as np
from jaxtyping import Int

from ._base import AbstractTask, Batch, check_int

#: The fraction of a corpus (its beginning) used for training; the rest is the validation split.
TRAIN_FRACTION_TENTHS = 9


def _codepoints(text: str) -> np.ndarray:
    """The Unicode code points of `text` as a uint32 array, without a Python loop."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class CharCorpus:
    """A text corpus for character-level language modelling.

    The vocabulary is the sorted set of characters that occur in the text; `encode` maps text to their
    indices and `decode` maps indices back. The first 90% of the text (`train_data`) is the training split
    and the last 10% (`val_data`) the validation split.

    Build one with `CharCorpus.from_text`, `CharCorpus.from_file` or `CharCorpus.default()`.

    **Arguments:**

    - `text`: the whole corpus, a non-empty `str`.
    - `source`: where the text came from (a path or a description), used in messages and `repr`.
    """

    text: str
    source: str = "<text>"
    chars: tuple[str, ...] = dataclasses.field(init=False)
    data: Int[np.ndarray, " n"] = dataclasses.field(init=False)
    _vocab_codepoints: np.ndarray = dataclasses.field(init=False)

    def __post_init__(self):
        if not isinstance(self.text, str):
            raise TypeError(f"CharCorpus: `text` must be a str, got {type(self.text).__name__}.")
        if not self.text:
            raise ValueError(f"CharCorpus: `text` from {self.source} is empty; expected at least one character.")
        codepoints = _codepoints(self.text)
        vocab, data = np.unique(codepoints, return_inverse=True)
        object.__setattr__(self, "chars", tuple(chr(c) for c in vocab))
        object.__setattr__(self, "_vocab_codepoints", vocab)
        object.__setattr__(self, "data", data.reshape(-1).astype(np.int32))
        self.data.setflags(write=False)

    # ----------------------------------------------------------------------------------------- builders

    @classmethod
    def from_text(cls, text: str, *, source: str = "<text>") -> CharCorpus:
        """Build a corpus from a string.

        **Arguments:**

        - `text`: the corpus, a non-empty `str`.
        - `source`: a description of where the text came from, used in messages.

        **Returns:**

        A `CharCorpus`.
        """
        return cls(text=text, source=source)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> CharCorpus:
        """Build a corpus from a UTF-8 text file.

        **Arguments:**

        - `path`: path of the file.

        **Returns:**

        A `CharCorpus` whose `source` is `path`.

        **Raises:**

        `ValueError`, naming the path, if the file is empty or is not valid UTF-8 (the message gives the
        offset of the first bad byte); `FileNotFoundError` if it does not exist.
        """
        path = os.fspath(path)
        with open(path, "rb") as f:
            raw = f.read()
        if not raw:
            raise ValueError(f"CharCorpus.from_file: the file {path!r} is empty; expected UTF-8 text.")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            bad = raw[error.start : error.end]
            raise ValueError(
                f"CharCorpus.from_file: the file {path!r} is not valid UTF-8: {error.reason} at byte offset "
                f"{error.start} (bytes {bad!r})."
            ) from error
        return cls(text=text, source=path)

    @classmethod
    def default(cls) -> CharCorpus:
        """The default corpus: the English help text that ships with every CPython installation.

        It is `pydoc_data.topics.topics` (the text behind `help("topic")`), its values joined in sorted key
        order with blank lines: about 465k characters of technical English and code, read from the standard
        library (nothing is downloaded). Built once and cached.

        **Returns:**

        A `CharCorpus` whose `source` is `"pydoc_data.topics"`.
        """
        return _default_corpus()

    # ------------------------------------------------------------------------------------ vocabulary

    @property
    def vocab_size(self) -> int:
        """The number of distinct characters."""
        return len(self.chars)

    def encode(self, text: str) -> Int[np.ndarray, " n"]:
        """Map text to character indices.

        **Arguments:**

        - `text`: a `str` made of characters of this corpus.

        **Returns:**

        An int32 array of shape `(len(text),)`.

        **Raises:**

        `ValueError` listing the characters that are not in the vocabulary.
        """
        if not isinstance(text, str):
            raise TypeError(f"CharCorpus.encode: `text` must be a str, got {type(text).__name__}.")
        codepoints = _codepoints(text)
        indices = np.searchsorted(self._vocab_codepoints, codepoints)
        indices = np.minimum(indices, len(self._vocab_codepoints) - 1)
        unknown = self._vocab_codepoints[indices] != codepoints
        if np.any(unknown):
            missing = sorted({chr(c) for c in codepoints[unknown]})
            raise ValueError(
                f"CharCorpus.encode: `text` has {len(missing)} character(s) not in the vocabulary of "
                f"{self.source}: {''.join(missing[:20])!r}{' ...' if len(missing) > 20 else ''}."
            )
        return indices.astype(np.int32)

    def decode(self, ids) -> str:
        """Map character indices back to text.

        **Arguments:**

        - `ids`: a 1-D integer array (or sequence) of indices in `[0, vocab_size)`.

        **Returns:**

        The decoded `str`.
        """
        ids = np.asarray(ids)
        if ids.size == 0 and ids.ndim == 1:
            return ""
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(
                f"CharCorpus.decode: `ids` must be a 1-D integer array, got shape {ids.shape} and dtype {ids.dtype}."
            )
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise ValueError(
                f"CharCorpus.decode: `ids` must lie in [0, {self.vocab_size}), got values in "
                f"[{ids.min()}, {ids.max()}]."
            )
        return self._vocab_codepoints[ids].astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")

    # ---------------------------------------------------------------------------------------- splits

    @property
    def num_train(self) -> int:
        """The number of characters in the training split: `floor(0.9 * len(text))`."""
        return len(self.data) * TRAIN_FRACTION_TENTHS // 10

    @property
    def train_data(self) -> Int[np.ndarray, " n_train"]:
        """The encoded training split: the first 90% of the text."""
        return self.data[: self.num_train]

    @property
    def val_data(self) -> Int[np.ndarray, " n_val"]:
        """The encoded validation split: the last 10% of the text."""
        return self.data[self.num_train :]

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        return f"CharCorpus(source={self.source!r}, num_chars={len(self)}, vocab_size={self.vocab_size})"


@functools.cache
def _default_corpus() -> CharCorpus:
    try:
        from pydoc_data.topics import topics
    except ImportError as error:  # pragma: no cover - every CPython ships it, some distributions split it
        raise RuntimeError(
            "CharCorpus.default: the standard-library module `pydoc_data` is missing from this Python "
            "installation; build a corpus with CharCorpus.from_file(path) instead."
        ) from error
    text = "\n\n".join(topics[key] for key in sorted(topics))
    return CharCorpus(text=text, source="pydoc_data.topics")


@dataclasses.dataclass(frozen=True)
class CharLM(AbstractTask):
    """Character-level language modelling on random windows of a `CharCorpus`.

    Each example is a window starting at a uniformly random offset `i` of the split's text: inputs
    `text[i : i + seq_len]`, targets `text[i + 1 : i + seq_len + 1]`, every position scored. `"train"`
    batches read the training split (first 90%), `"eval"` batches the validation split (last 10%). The metric
    is bits per character, `bits_per_char`.

    For scale: nanoGPT's CPU recipe on tiny-Shakespeare (4 layers, width 128, context 64, batch 12, 2,000
    iterations) reaches about 1.88 nats/char (≈ 2.7 bits/char) of validation loss.

    **Arguments:**

    - `seq_len`: window length; both splits must hold at least `seq_len + 1` characters.
    - `corpus`: the `CharCorpus` to read; `None` (the default) means `CharCorpus.default()`.
    """

    name: ClassVar[str] = "charlm"
    metric_name: ClassVar[str] = "bits_per_char"

    seq_len: int = 64
    corpus: CharCorpus | None = None

    def __post_init__(self):
        seq_len = check_int(self.seq_len, "seq_len", minimum=1, owner="CharLM")
        corpus = CharCorpus.default() if self.corpus is None else self.corpus
        if not isinstance(corpus, CharCorpus):
            raise TypeError(f"CharLM: `corpus` must be a CharCorpus or None, got {type(corpus).__name__}.")
        for split, data in (("train", corpus.train_data), ("validation", corpus.val_data)):
            if len(data) < seq_len + 1:
                raise ValueError(
                    f"CharLM: the {split} split of {corpus!r} has {len(data)} characters, fewer than "
                    f"seq_len + 1 = {seq_len + 1}; use a shorter `seq_len` or a longer corpus."
                )
        object.__setattr__(self, "seq_len", seq_len)
        object.__setattr__(self, "corpus", corpus)

    @property
    def vocab_size(self) -> int:
        """The corpus's number of distinct characters."""
        return self._corpus().vocab_size

    def _corpus(self) -> CharCorpus:
        assert self.corpus is not None  # __post_init__ replaced None by the default corpus
        return self.corpus

    def _sample(self, rng: np.random.Generator, batch_size: int, split: str) -> Batch:
        corpus = self._corpus()
        data = corpus.train_data if split == "train" else corpus.val_data
        starts = rng.integers(0, len(data) - self.seq_len, size=batch_size)
        windows = data[starts[:, None] + np.arange(self.seq_len + 1)]
        return Batch(
            inputs=np.ascontiguousarray(windows[:, :-1]),
            targets=np.ascontiguousarray(windows[:, 1:]),
            mask=np.ones((batch_size, self.seq_len), dtype=bool),
        )
