"""Autoregressive sampling from a trained `Transformer` (temperature, top-k), and text from a character model."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Int, PRNGKeyArray

from ..tasks import CharCorpus
from .._validate import check_int
from ._model import Transformer


@eqx.filter_jit
def _generate(model: Transformer, buffer, length, num_tokens: int, temperature, top_k: int, key):
    L = model.max_len
    positions = jnp.arange(L)

    def body(carry, key):
        buffer, n = carry  # buffer holds the last min(n, L) tokens at its start
        logits = model(buffer, positions < n)[jnp.minimum(n, L) - 1].astype(jnp.float32)
        if top_k < model.vocab_size:
            kth = jax.lax.top_k(logits, top_k)[0][-1]
            logits = jnp.where(logits < kth, -jnp.inf, logits)
        token = jax.random.categorical(key, logits / temperature).astype(buffer.dtype)
        shifted = jnp.concatenate([buffer[1:], token[None]])
        written = buffer.at[jnp.minimum(n, L - 1)].set(token)
        buffer = jnp.where(n >= L, shifted, written)
        return (buffer, n + 1), token

    _, tokens = jax.lax.scan(body, (buffer, length), jax.random.split(key, num_tokens))
    return tokens


def sample(
    model: Transformer,
    prompt: Int[ArrayLike, " P"],
    num_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    key: PRNGKeyArray,
) -> Int[Array, " num_tokens"]:
    r"""Draw `num_tokens` tokens after `prompt`, one at a time:
    $y_{n} \sim \mathrm{softmax}(z_{n}/T)$ restricted to the `top_k` largest logits.

    The model reads the last `max_len` tokens (a sliding window once the text is longer than its context).
    The same `key` always gives the same tokens.

    **Arguments:**

    - `model`: a causal `Transformer`.
    - `prompt`: int token ids (P,), P ≥ 1 (a JAX or NumPy array).
    - `num_tokens`: how many tokens to draw, ≥ 1.
    - `temperature`: T > 0; lower is greedier.
    - `top_k`: keep only the k most likely tokens (None: all).
    - `key`: PRNG key (keyword-only).

    **Returns:** the drawn token ids, int32 (num_tokens,).
    """
    prompt = np.asarray(prompt)
    if prompt.ndim != 1 or prompt.size == 0 or not np.issubdtype(prompt.dtype, np.integer):
        raise ValueError(
            f"prompt: expected a non-empty 1-D array of token ids, got shape {prompt.shape} and dtype {prompt.dtype}"
        )
    if prompt.min() < 0 or prompt.max() >= model.vocab_size:
        raise ValueError(
            f"prompt: expected token ids in [0, {model.vocab_size}), got values in [{prompt.min()}, {prompt.max()}]"
        )
    num_tokens = check_int("num_tokens", num_tokens)
    if not (isinstance(temperature, (int, float)) and temperature > 0 and np.isfinite(temperature)):
        raise ValueError(f"temperature: expected a finite number > 0, got {temperature!r}")
    top_k = model.vocab_size if top_k is None else top_k
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k:
        raise ValueError(f"top_k: expected a positive int or None, got {top_k!r}")
    top_k = min(top_k, model.vocab_size)
    L = model.max_len
    context = prompt[-L:].astype(np.int32)
    buffer = np.zeros(L, np.int32)
    buffer[: len(context)] = context
    return _generate(
        model,
        jnp.asarray(buffer),
        jnp.asarray(len(context)),
        num_tokens,
        jnp.asarray(temperature, jnp.float32),
        top_k,
        key,
    )


def sample_text(
    model: Transformer,
    corpus: CharCorpus,
    prompt: str = "\n",
    num_chars: int = 200,
    *,
    temperature: float = 0.8,
    top_k: int | None = None,
    seed: int = 0,
) -> str:
    """Continue `prompt` with `num_chars` characters drawn from a character model trained on `corpus`.

    `prompt` must be made of characters of the corpus (an empty prompt starts from a newline if the corpus
    has one, else from its first character). **Returns:** the drawn text (without the prompt).
    """
    if not prompt:
        prompt = "\n" if "\n" in corpus.chars else corpus.chars[0]
    if corpus.vocab_size != model.vocab_size:
        raise ValueError(
            f"corpus: expected a vocabulary of the model's {model.vocab_size} characters, got {corpus.vocab_size}"
        )
    ids = sample(
        model, corpus.encode(prompt), num_chars, temperature=temperature, top_k=top_k, key=jax.random.PRNGKey(seed)
    )
    return corpus.decode(np.asarray(ids))
