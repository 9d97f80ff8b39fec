"""Multi-query associative recall (MQAR)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from ._base import AbstractTask, Batch, check_int, check_positive_float, random_subsets


@dataclasses.dataclass(frozen=True)
class MQAR(AbstractTask):
    """Multi-query associative recall, the synthetic recall task of Zoology.

    Each sequence opens with `num_kv_pairs` key-value pairs `k1 v1 k2 v2 ...` (distinct keys drawn from the
    first half of the vocabulary, distinct values from the second half). The remaining positions hold
    queries: every key appears once more, and the model must predict, at that position, the value paired
    with it. All other query-region positions hold random noise tokens drawn from the whole vocabulary. Only
    the positions of queried keys are scored.

    Query placement follows Zoology: the query region is cut into `(seq_len - 2 * num_kv_pairs) // 2` even
    slots, and the slots of the queries are drawn without replacement with probability proportional to
    `(g + 1) ** (power_a - 1)` for slot `g` (a power law: with the default `power_a = 0.01` most queries sit
    near the key-value prefix, a few far from it). The draw is vectorised as the `num_kv_pairs` smallest of
    `E_g / w_g` with `E_g` i.i.d. exponential (i.e. `-log` of uniforms) — the Efraimidis-Spirakis scheme,
    the same distribution as sequential weighted sampling without replacement.

    Zoology's grid is `(seq_len, num_kv_pairs)` in {(64, 4), (128, 8), (256, 16), (512, 64)} with
    `vocab_size = 8192`; the defaults here are the smallest point of that grid with a vocabulary small
    enough for a CPU.

    **Arguments:**

    - `vocab_size`: number of token ids; keys come from `[0, vocab_size // 2)`, values from
      `[vocab_size // 2, vocab_size)`.
    - `seq_len`: length of each sequence; at least `4 * num_kv_pairs`.
    - `num_kv_pairs`: number of key-value pairs (and of queries, one per key) per sequence.
    - `power_a`: exponent of the power law placing the queries, `> 0`.

    **References:**

    Arora, Eyuboglu, Timalsina, Johnson, Poli, Zou, Rudra, Ré (2023). *Zoology: Measuring and Improving
    Recall in Efficient Language Models.* arXiv:2312.04927.
    """

    name: ClassVar[str] = "mqar"
    metric_name: ClassVar[str] = "accuracy"

    vocab_size: int = 64
    seq_len: int = 64
    num_kv_pairs: int = 4
    power_a: float = 0.01

    def __post_init__(self):
        owner = "MQAR"
        vocab_size = check_int(self.vocab_size, "vocab_size", minimum=2, owner=owner)
        seq_len = check_int(self.seq_len, "seq_len", minimum=1, owner=owner)
        num_kv_pairs = check_int(self.num_kv_pairs, "num_kv_pairs", minimum=1, owner=owner)
        power_a = check_positive_float(self.power_a, "power_a", owner=owner)
        if seq_len < 4 * num_kv_pairs:
            raise ValueError(
                f"MQAR: `seq_len` must be at least 4 * num_kv_pairs = {4 * num_kv_pairs} (the key-value prefix "
                f"and one query slot per key), got seq_len={seq_len}."
            )
        if vocab_size // 2 < num_kv_pairs:
            raise ValueError(
                f"MQAR: `vocab_size` must be at least 2 * num_kv_pairs = {2 * num_kv_pairs} so that its first "
                f"half holds {num_kv_pairs} distinct keys and its second half as many distinct values, "
                f"got vocab_size={vocab_size}."
            )
        object.__setattr__(self, "vocab_size", vocab_size)
        object.__setattr__(self, "seq_len", seq_len)
        object.__setattr__(self, "num_kv_pairs", num_kv_pairs)
        object.__setattr__(self, "power_a", power_a)

    def _sample(self, rng: np.random.Generator, batch_size: int, split: str) -> Batch:
        del split
        num_pairs, seq_len, vocab_size = self.num_kv_pairs, self.seq_len, self.vocab_size
        num_keys = vocab_size // 2
        context = 2 * num_pairs
        num_slots = (seq_len - context) // 2

        keys = random_subsets(rng, batch_size, num_keys, num_pairs)
        values = num_keys + random_subsets(rng, batch_size, vocab_size - num_keys, num_pairs)

        weights = np.arange(1, num_slots + 1, dtype=np.float64) ** (self.power_a - 1.0)
        slots = np.argsort(rng.standard_exponential((batch_size, num_slots)) / weights, axis=1)[:, :num_pairs]
        query_positions = context + 2 * slots

        inputs = rng.integers(0, vocab_size, size=(batch_size, seq_len), dtype=np.int32)
        inputs[:, 0:context:2] = keys
        inputs[:, 1:context:2] = values
        np.put_along_axis(inputs, query_positions, keys.astype(np.int32), axis=1)
        targets = np.zeros((batch_size, seq_len), dtype=np.int32)
        np.put_along_axis(targets, query_positions, values.astype(np.int32), axis=1)
        mask = np.zeros((batch_size, seq_len), dtype=bool)
        np.put_along_axis(mask, query_positions, True, axis=1)
        return Batch(inputs=inputs, targets=targets, mask=mask)
