"""Selective copying: copy the data tokens scattered among noise, in order."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from ._base import AbstractTask, Batch, check_int, random_subsets


@dataclasses.dataclass(frozen=True)
class SelectiveCopying(AbstractTask):
    """The selective-copying task of Mamba: filter the noise out and copy the data in order.

    A sequence is a prefix of `seq_len - num_tokens` positions followed by `num_tokens` marker tokens. The
    prefix holds `num_tokens` data tokens (drawn uniformly from `[0, vocab_size - 2)`, repeats allowed) at
    uniformly random distinct positions, kept in order, and the noise token `vocab_size - 2` everywhere else.
    The marker token is `vocab_size - 1`. At the `j`-th marker position the target is the `j`-th data token;
    only the marker positions are scored, so accuracy is per copied token.

    Mamba's setup is `vocab_size = 16`, 16 tokens to copy and a prefix of 4096; the defaults here are
    shorter, for a CPU.

    **Arguments:**

    - `vocab_size`: number of token ids, including the noise and marker tokens; at least 3.
    - `seq_len`: total length of each sequence (prefix and markers); at least `2 * num_tokens`.
    - `num_tokens`: number of data tokens to copy; at least 1.

    **References:**

    Gu, Dao (2023). *Mamba: Linear-Time Sequence Modeling with Selective State Spaces.* arXiv:2312.00752.
    """

    name: ClassVar[str] = "selective-copy"
    metric_name: ClassVar[str] = "accuracy"

    vocab_size: int = 16
    seq_len: int = 64
    num_tokens: int = 8

    def __post_init__(self):
        owner = "SelectiveCopying"
        vocab_size = check_int(self.vocab_size, "vocab_size", minimum=3, owner=owner)
        seq_len = check_int(self.seq_len, "seq_len", minimum=2, owner=owner)
        num_tokens = check_int(self.num_tokens, "num_tokens", minimum=1, owner=owner)
        if seq_len < 2 * num_tokens:
            raise ValueError(
                f"SelectiveCopying: `seq_len` must be at least 2 * num_tokens = {2 * num_tokens} (a prefix "
                f"holding the {num_tokens} data tokens, then as many markers), got seq_len={seq_len}."
            )
        object.__setattr__(self, "vocab_size", vocab_size)
        object.__setattr__(self, "seq_len", seq_len)
        object.__setattr__(self, "num_tokens", num_tokens)

    @property
    def noise_token(self) -> int:
        """The noise token id, `vocab_size - 2`."""
        return self.vocab_size - 2

    @property
    def marker_token(self) -> int:
        """The marker token id, `vocab_size - 1`."""
        return self.vocab_size - 1

    def _sample(self, rng: np.random.Generator, batch_size: int, split: str) -> Batch:
        del split
        num_tokens, seq_len = self.num_tokens, self.seq_len
        prefix = seq_len - num_tokens
        data = rng.integers(0, self.noise_token, size=(batch_size, num_tokens), dtype=np.int32)
        positions = np.sort(random_subsets(rng, batch_size, prefix, num_tokens), axis=1)
        inputs = np.full((batch_size, seq_len), self.noise_token, dtype=np.int32)
        np.put_along_axis(inputs, positions, data, axis=1)
        inputs[:, prefix:] = self.marker_token
        targets = np.zeros((batch_size, seq_len), dtype=np.int32)
        targets[:, prefix:] = data
        mask = np.zeros((batch_size, seq_len), dtype=bool)
        mask[:, prefix:] = True
        return Batch(inputs=inputs, targets=targets, mask=mask)
