"""Metrics over the scored (masked-in) positions of a `Batch`: `accuracy` and `bits_per_char`."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, Shaped

from ._base import Batch


def _check_batch(batch, owner: str) -> None:
    if not isinstance(batch, Batch):
        raise TypeError(f"{owner}: `batch` must be a Batch, got {type(batch).__name__}.")


def accuracy(
    outputs: Float[np.ndarray | Array, "batch seq vocab"] | Int[np.ndarray | Array, "batch seq"], batch: Batch
) -> Shaped[Array, ""]:
    """The fraction of scored positions whose target is predicted exactly.

    Only positions where `batch.mask` is True count: whatever the outputs are elsewhere, the result is the
    same. Works on NumPy and JAX arrays and under `jax.jit`.

    **Arguments:**

    - `outputs`: either logits of shape `(batch, seq_len, vocab_size)` (the prediction is their argmax) or
      predicted token ids, an integer array of shape `(batch, seq_len)`.
    - `batch`: the `Batch` the outputs were computed on.

    **Returns:**

    A float32 scalar in [0, 1]: correct scored positions / scored positions (NaN if nothing is scored).
    """
    _check_batch(batch, "accuracy")
    outputs = jnp.asarray(outputs)
    expected = tuple(batch.targets.shape)
    if outputs.ndim == 3:
        if tuple(outputs.shape[:2]) != expected:
            raise ValueError(
                f"accuracy: logits `outputs` must have shape {expected + ('vocab',)}, got {tuple(outputs.shape)}."
            )
        predictions = jnp.argmax(outputs, axis=-1)
    elif outputs.ndim == 2:
        if not jnp.issubdtype(outputs.dtype, jnp.integer):
            raise TypeError(
                f"accuracy: 2-D `outputs` are read as predicted token ids and must be integers, "
                f"got dtype {outputs.dtype}; pass logits of shape {expected + ('vocab',)} instead."
            )
        if tuple(outputs.shape) != expected:
            raise ValueError(f"accuracy: predictions `outputs` must have shape {expected}, got {tuple(outputs.shape)}.")
        predictions = outputs
    else:
        raise ValueError(
            f"accuracy: `outputs` must be logits of shape {expected + ('vocab',)} or predictions of shape "
            f"{expected}, got shape {tuple(outputs.shape)}."
        )
    mask = jnp.asarray(batch.mask, dtype=bool)
    correct = (predictions == jnp.asarray(batch.targets)) & mask
    return jnp.sum(correct, dtype=jnp.float32) / jnp.sum(mask, dtype=jnp.float32)


def bits_per_char(logits: Float[np.ndarray | Array, "batch seq vocab"], batch: Batch) -> Shaped[Array, ""]:
    """Mean cross-entropy over the scored positions, in bits per token (per character for `CharLM`).

    $$\\mathrm{bpc} = \\frac{1}{\\ln 2}\\,\\frac{1}{|M|}\\sum_{(b,t)\\in M} -\\log \\mathrm{softmax}(z_{bt})_{y_{bt}}$$

    where `M` is the set of positions with `batch.mask` True. Positions outside `M` never count. Works under
    `jax.jit`. A model that predicts uniformly over `V` symbols scores `log2(V)`.

    **Arguments:**

    - `logits`: unnormalised log-probabilities of shape `(batch, seq_len, vocab_size)`.
    - `batch`: the `Batch` the logits were computed on.

    **Returns:**

    A float scalar: bits per character (nats per character / ln 2; NaN if nothing is scored).
    """
    _check_batch(batch, "bits_per_char")
    logits = jnp.asarray(logits)
    expected = tuple(batch.targets.shape)
    if logits.ndim != 3 or tuple(logits.shape[:2]) != expected:
        raise ValueError(f"bits_per_char: `logits` must have shape {expected + ('vocab',)}, got {tuple(logits.shape)}.")
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(f"bits_per_char: `logits` must be floating point, got dtype {logits.dtype}.")
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    targets = jnp.asarray(batch.targets)[..., None]
    nll = -jnp.take_along_axis(log_probs, targets, axis=-1)[..., 0]
    mask = jnp.asarray(batch.mask, dtype=bool)
    total = jnp.sum(jnp.where(mask, nll, 0.0))
    return total / jnp.sum(mask, dtype=log_probs.dtype) / math.log(2.0)
