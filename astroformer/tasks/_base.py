"""The common interface of the synthetic and language tasks: `Batch` and `AbstractTask`."""

from __future__ import annotations

import abc
import dataclasses
import math
import operator
import typing
from typing import TYPE_CHECKING, ClassVar

import jax
import numpy as np
from jaxtyping import Array, Bool, Int

#: The random stream of each split: the generator of split `s` for seed `n` is seeded by
#: `np.random.SeedSequence([n, _SPLIT_IDS[s]])`, so train and eval never share a stream.
_SPLIT_IDS: dict[str, int] = {"train": 0, "eval": 1}


@typing.no_type_check  # JAX and Equinox rebuild it with other leaves (filter specs: True/False); not checked
@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class Batch:
    """A batch of next-token-prediction examples.

    The model reads `inputs` and, at every position `t`, predicts `targets[:, t]`; only positions where
    `mask` is True are scored. Targets at masked-out positions are placeholders (0) and carry no meaning.

    `Batch` is a pytree (its three arrays are its leaves), so it can be passed through `jax.jit`.

    **Arguments:**

    - `inputs`: token ids the model sees, int32 of shape `(batch, seq_len)`.
    - `targets`: token ids to predict, int32 of shape `(batch, seq_len)`.
    - `mask`: which positions are scored, bool of shape `(batch, seq_len)`.
    """

    inputs: Int[np.ndarray | Array, "batch seq"]
    targets: Int[np.ndarray | Array, "batch seq"]
    mask: Bool[np.ndarray | Array, "batch seq"]


class AbstractTask(abc.ABC):
    """A task: a seeded generator of `Batch`es and the metric it is judged by.

    Concrete tasks define the class attributes `name` (their registry name, see `get_task`) and
    `metric_name` (`"accuracy"` or `"bits_per_char"`), the attributes `vocab_size` and `seq_len`, and the
    method `_sample`, which draws a batch from a given `np.random.Generator`.

    Batches are deterministic for a seed: `task.batch("train", 32, seed=0)` returns identical arrays every
    time it is called. The `"eval"` split is drawn from a random stream disjoint from `"train"`'s for the
    same seed (for `CharLM` it also reads a disjoint part of the text).
    """

    name: ClassVar[str]
    metric_name: ClassVar[str]
    seq_len: int
    if TYPE_CHECKING:
        # Read-only to the type checker, so a subclass may define it as a dataclass field or as a property
        # (CharLM's comes from its corpus). Only an annotation at run time: a property here would be in the
        # way of the subclasses' frozen dataclass fields.
        @property
        def vocab_size(self) -> int: ...
    else:
        vocab_size: int

    @abc.abstractmethod
    def _sample(self, rng: np.random.Generator, batch_size: int, split: str) -> Batch:
        """Draw `batch_size` examples of `split` from `rng`."""

    def batch(self, split: str, batch_size: int, *, seed: int | np.integer) -> Batch:
        """Draw a batch of examples.

        **Arguments:**

        - `split`: `"train"` or `"eval"`; the two are drawn from disjoint random streams.
        - `batch_size`: the number of examples, a positive int.
        - `seed`: a non-negative int; the same seed (and split) always gives the same batch.

        **Returns:**

        A `Batch` whose arrays have shape `(batch_size, self.seq_len)`.
        """
        if not isinstance(split, str) or split not in _SPLIT_IDS:
            raise ValueError(
                f"{type(self).__name__}.batch: `split` must be one of {sorted(_SPLIT_IDS)}, got {split!r}."
            )
        batch_size = check_int(batch_size, "batch_size", minimum=1, owner=f"{type(self).__name__}.batch")
        seed = check_int(seed, "seed", minimum=0, owner=f"{type(self).__name__}.batch")
        rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_IDS[split]]))
        return self._sample(rng, batch_size, split)

    def metric(self, outputs, batch: Batch):
        """Score model outputs on a batch with this task's metric (`self.metric_name`).

        **Arguments:**

        - `outputs`: logits of shape `(batch, seq_len, vocab_size)`; for accuracy tasks, predicted token ids
          of shape `(batch, seq_len)` are accepted too.
        - `batch`: the `Batch` the outputs were computed on.

        **Returns:**

        A scalar: `accuracy(outputs, batch)` or `bits_per_char(outputs, batch)`.
        """
        from ._metrics import accuracy, bits_per_char

        if self.metric_name == "accuracy":
            return accuracy(outputs, batch)
        if self.metric_name == "bits_per_char":
            return bits_per_char(outputs, batch)
        raise NotImplementedError(f"{type(self).__name__}: unknown metric_name {self.metric_name!r}.")


def check_int(value, argument: str, *, minimum: int, owner: str) -> int:
    """Return `value` as an `int`, raising a clear error unless it is an integer `>= minimum`.

    **Arguments:**

    - `value`: the value given.
    - `argument`: the argument's name, used in the error message.
    - `minimum`: the smallest value allowed.
    - `owner`: who received the argument (e.g. the class name), used in the error message.

    **Returns:**

    `value` as a Python `int`.
    """
    if isinstance(value, bool):
        raise TypeError(f"{owner}: `{argument}` must be an int, got the bool {value!r}.")
    try:
        as_int = operator.index(value)
    except TypeError:
        raise TypeError(
            f"{owner}: `{argument}` must be an int, got {value!r} of type {type(value).__name__}."
        ) from None
    if as_int < minimum:
        raise ValueError(f"{owner}: `{argument}` must be an int >= {minimum}, got {as_int}.")
    return as_int


def check_positive_float(value, argument: str, *, owner: str) -> float:
    """Return `value` as a `float`, raising a clear error unless it is finite and `> 0`."""
    if isinstance(value, bool):
        raise TypeError(f"{owner}: `{argument}` must be a positive float, got the bool {value!r}.")
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"{owner}: `{argument}` must be a positive float, got {value!r} of type {type(value).__name__}."
        ) from None
    if not (math.isfinite(as_float) and as_float > 0):
        raise ValueError(f"{owner}: `{argument}` must be a finite float > 0, got {as_float}.")
    return as_float


def random_subsets(rng: np.random.Generator, batch_size: int, n: int, k: int) -> np.ndarray:
    """Draw, per row, `k` distinct integers from `range(n)` in uniformly random order.

    The first `k` entries of an argsort of i.i.d. uniforms: a uniformly random ordered `k`-subset,
    vectorised over the batch.

    **Returns:**

    An int array of shape `(batch_size, k)`.
    """
    return np.argsort(rng.random((batch_size, n)), axis=1)[:, :k]
