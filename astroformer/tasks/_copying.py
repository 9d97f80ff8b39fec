"""Copying: reproduce a random sequence after a separator."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from ._base import AbstractTask, Batch, check_int


@dataclasses.dataclass(frozen=True)
class Copying(AbstractTask):
    """The plain copying task: `x1 ... xn SEP` → `x1 ... xn`.

    A sequence of `n = seq_len // 2` tokens drawn uniformly from `[0, vocab_size - 1)` is followed by the
    separator `vocab_size - 1`, after which the model must reproduce the sequence. In next-token form the
    inputs are `x1 ... xn SEP x1 ... x(n-1)` and, from the separator on, the targets are `x1 ... xn`; only
    those `n` positions are scored.

    **Arguments:**

    - `vocab_size`: number of token ids, including the separator; at least 3.
    - `seq_len`: total length of each sequence, `2 * n`; even and at least 2.
    """

    name: ClassVar[str] = "copy"
    metric_name: ClassVar[str] = "accuracy"

    vocab_size: int = 16
    seq_len: int = 32

    def __post_init__(self):
        vocab_size = check_int(self.vocab_size, "vocab_size", minimum=3, owner="Copying")
        seq_len = check_int(self.seq_len, "seq_len", minimum=2, owner="Copying")
        if seq_len % 2:
            raise ValueError(
                f"Copying: `seq_len` must be even (the sequence and its copy have the same length), "
                f"got seq_len={seq_len}."
            )
        object.__setattr__(self, "vocab_size", vocab_size)
        object.__setattr__(self, "seq_len", seq_len)

    @property
    def separator_token(self) -> int:
        """The separator token id, `vocab_size - 1`."""
        return self.vocab_size - 1

    def _sample(self, rng: np.random.Generator, batch_size: int, split: str) -> Batch:
        del split
        n = self.seq_len // 2
        data = rng.integers(0, self.separator_token, size=(batch_size, n), dtype=np.int32)
        separator = np.full((batch_size, 1), self.separator_token, dtype=np.int32)
        inputs = np.concatenate([data, separator, data[:, :-1]], axis=1)
        targets = np.zeros((batch_size, self.seq_len), dtype=np.int32)
        targets[:, n:] = data
        mask = np.zeros((batch_size, self.seq_len), dtype=bool)
        mask[:, n:] = True
        return Batch(inputs=inputs, targets=targets, mask=mask)
