"""Induction heads: recall the token that followed a trigger."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from ._base import AbstractTask, Batch, check_int


@dataclasses.dataclass(frozen=True)
class InductionHeads(AbstractTask):
    """The induction-head task: `... T x ... T` → predict `x`.

    Token `vocab_size - 1` is the trigger `T`; every other position holds an ordinary token drawn uniformly
    from `[0, vocab_size - 1)`. The trigger appears exactly twice: once at a uniformly random position `p`
    in `[0, seq_len - 3]`, followed by the target `x` (an ordinary token), and again as the last input
    token. Only the last position is scored, with target `x`.

    The defaults are Mamba's setup (vocabulary 16, sequence length 256); any `seq_len >= 3` works.

    **Arguments:**

    - `vocab_size`: number of token ids, including the trigger; at least 3.
    - `seq_len`: length of each sequence; at least 3.

    **References:**

    Olsson et al. (2022). *In-context Learning and Induction Heads.* Transformer Circuits Thread.

    Gu, Dao (2023). *Mamba: Linear-Time Sequence Modeling with Selective State Spaces.* arXiv:2312.00752.
    """

    name: ClassVar[str] = "induction"
    metric_name: ClassVar[str] = "accuracy"

    vocab_size: int = 16
    seq_len: int = 256

    def __post_init__(self):
        object.__setattr__(
            self, "vocab_size", check_int(self.vocab_size, "vocab_size", minimum=3, owner="InductionHeads")
        )
        object.__setattr__(self, "seq_len", check_int(self.seq_len, "seq_len", minimum=3, owner="InductionHeads"))

    @property
    def trigger_token(self) -> int:
        """The trigger token id, `vocab_size - 1`."""
        return self.vocab_size - 1

    def _sample(self, rng: np.random.Generator, batch_size: int, split: str) -> Batch:
        del split
        seq_len, trigger = self.seq_len, self.trigger_token
        rows = np.arange(batch_size)
        inputs = rng.integers(0, trigger, size=(batch_size, seq_len), dtype=np.int32)
        positions = rng.integers(0, seq_len - 2, size=batch_size)
        inputs[rows, positions] = trigger
        inputs[:, -1] = trigger
        targets = np.zeros((batch_size, seq_len), dtype=np.int32)
        targets[:, -1] = inputs[rows, positions + 1]
        mask = np.zeros((batch_size, seq_len), dtype=bool)
        mask[:, -1] = True
        return Batch(inputs=inputs, targets=targets, mask=mask)
