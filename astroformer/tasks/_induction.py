"""Induction heads: having seen `A B` earlier, predict `B` when `A` recurs (repeated segments or a trigger)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from ._base import AbstractTask, Batch, check_int, random_subsets

_VARIANTS = ("repeat", "trigger")


@dataclasses.dataclass(frozen=True)
class InductionHeads(AbstractTask):
    """Induction heads: having seen `A B` earlier, predict `B` when `A` recurs.

    Two variants (`variant`):

    - `"repeat"` (default, dense supervision): a random segment of `seq_len // 2` **distinct** tokens drawn
      from the whole vocabulary, then the same segment again (one unscored noise token pads an odd
      `seq_len` at the end). At every position of the repeat except its last, the next token is determined by the
      first copy, and all those `seq_len // 2 - 1` positions are scored: the repeated-random-tokens test of
      Olsson et al. (2022), which gives many labels per sequence.
    - `"trigger"` (Mamba's setup, one label per sequence): token `vocab_size - 1` is the trigger `T`; every
      other position holds an ordinary token drawn uniformly from `[0, vocab_size - 1)`. The trigger appears
      exactly twice: once at a uniformly random position `p` in `[0, seq_len - 3]`, followed by the target
      `x`, and again as the last input token. Only the last position is scored, with target `x`.

    **Arguments:**

    - `vocab_size`: number of token ids; at least 3, and at least `seq_len // 2` for `"repeat"`.
    - `seq_len`: length of each sequence; at least 3 (`"trigger"`) or 4 (`"repeat"`).
    - `variant`: `"repeat"` or `"trigger"`.

    **References:**

    Olsson et al. (2022). *In-context Learning and Induction Heads.* Transformer Circuits Thread.

    Gu, Dao (2023). *Mamba: Linear-Time Sequence Modeling with Selective State Spaces.* arXiv:2312.00752.
    """

    name: ClassVar[str] = "induction"
    metric_name: ClassVar[str] = "accuracy"

    vocab_size: int = 16
    seq_len: int = 16
    variant: str = "repeat"

    def __post_init__(self):
        owner = "InductionHeads"
        vocab_size = check_int(self.vocab_size, "vocab_size", minimum=3, owner=owner)
        if self.variant not in _VARIANTS:
            raise ValueError(f"{owner}: `variant` must be one of {_VARIANTS}, got {self.variant!r}.")
        seq_len = check_int(self.seq_len, "seq_len", minimum=3 if self.variant == "trigger" else 4, owner=owner)
        if self.variant == "repeat" and vocab_size < seq_len // 2:
            raise ValueError(
                f"{owner}: `vocab_size` must be at least seq_len // 2 = {seq_len // 2} for variant 'repeat' (the "
                f"segment holds distinct tokens), got vocab_size={vocab_size}."
            )
        object.__setattr__(self, "vocab_size", vocab_size)
        object.__setattr__(self, "seq_len", seq_len)

    @property
    def trigger_token(self) -> int:
        """The trigger token id of the `"trigger"` variant, `vocab_size - 1`."""
        return self.vocab_size - 1

    def _sample(self, rng: np.random.Generator, batch_size: int, split: str) -> Batch:
        del split
        if self.variant == "repeat":
            return self._sample_repeat(rng, batch_size)
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

    def _sample_repeat(self, rng: np.random.Generator, batch_size: int) -> Batch:
        n, pad = self.seq_len // 2, self.seq_len % 2
        segment = random_subsets(rng, batch_size, self.vocab_size, n).astype(np.int32)
        noise = rng.integers(0, self.vocab_size, size=(batch_size, pad), dtype=np.int32)
        inputs = np.concatenate([segment, segment, noise], axis=1)
        targets = np.zeros_like(inputs)
        mask = np.zeros(inputs.shape, dtype=bool)
        targets[:, n : 2 * n - 1] = segment[:, 1:]  # at the repeat's i-th token, the first copy's (i+1)-th
        mask[:, n : 2 * n - 1] = True
        return Batch(inputs=inputs, targets=targets, mask=mask)
