r"""Decayed linear recurrences and (chunked) linear attention, the algebra that the reduced write phase and the
equilibrium share.

A stored trace with per-token decay $e^{\ell_t}$ obeys $S_t = e^{\ell_t} S_{t-1} + \sum_r k_{r,t} v_{r,t}^\top$,
and a query reads $q_t^\top S_t$. The causal form is computed chunk by chunk (quadratic inside a chunk, a
recurrence across chunks), so its cost is linear in the sequence length.
"""

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float


def linear_recurrence(a: Float[Array, "L *#K"], b: Float[Array, "L *K"]) -> Float[Array, "L *K"]:  # noqa: F821
    r"""$y_t = a_t\,y_{t-1} + b_t$ with $y_0 = 0$ (so $y_1 = b_1$), by a parallel associative scan.

    `a` broadcasts against `b` after the leading (time) axis: a per-token factor is passed as (L, 1), so the
    scan carries (and its gradient stores) one factor per token, not one per element."""

    def combine(left, right):
        a_l, b_l = left
        a_r, b_r = right
        return a_l * a_r, a_r * b_l + b_r

    return jax.lax.associative_scan(combine, (a, b))[1]


DENSE_RECURRENCE = 128
"""Up to this many steps `decayed_recurrence` is one (L, L) matrix product, beyond it an associative scan."""


def decayed_recurrence(
    log_a: Float[Array, " L"],
    b: Float[Array, "L *K"],  # noqa: F821
    initial: Float[Array, "*K"] | None = None,  # noqa: F821
) -> Float[Array, "L *K"]:  # noqa: F821
    r"""$y_t = e^{\ell_t}\,y_{t-1} + b_t$ from $y_0$ = `initial` (default 0, so $y_1 = b_1$), with the log factors
    $\ell_t$ = `log_a` (one per step, $\le 0$ for a decay; $-\infty$ allowed) broadcast over the trailing axes of
    `b`. A given `initial` (e.g. the state a chunk of a longer sequence starts from) enters through the first step.

    Up to `DENSE_RECURRENCE` steps (every chunk of the chunked head) it is one product with the (L, L) lower
    triangle $W_{t\tau} = e^{\sum_{\tau < u \le t} \ell_u}$: each exponent is a sum over exactly its own steps (a
    cumulative sum down each column of the masked log factors, Mamba-2's "segsum"), never a difference of two
    long cumulative sums, so nothing is lost to cancellation. It traces and compiles to a few operations where the
    associative scan (`linear_recurrence`, used for longer sequences) unrolls a log-depth tree of slices."""
    L = b.shape[0]
    if initial is not None:
        b = b.at[0].add(jnp.exp(log_a[0]) * initial)
    if L > DENSE_RECURRENCE:
        return linear_recurrence(jnp.exp(log_a).reshape((L,) + (1,) * (b.ndim - 1)), b)
    below = jnp.tril(jnp.ones((L, L), bool), -1)  # [u, tau]: u > tau
    lower = jnp.tril(jnp.ones((L, L), bool))  # [t, tau]: t >= tau
    segments = jnp.cumsum(jnp.where(below, log_a[:, None], 0.0), axis=0)  # [t, tau] = sum_{tau < u <= t} log a_u
    weights = jnp.where(lower, jnp.exp(jnp.where(lower, segments, 0.0)), 0.0)
    # Full float32 precision where a platform would otherwise use reduced-precision products (TF32 on GPUs): these
    # are the neurons' states and the astrocyte weights, not an attention read.
    return jnp.tensordot(weights.astype(b.dtype), b, axes=1, precision=jax.lax.Precision.HIGHEST)


def linear_attention_state(
    q: Float[Array, "L M"],
    keys: Float[Array, "R L M"],
    values: Float[Array, "R L N"],
    log_decay: Float[Array, " L"],
    *,
    causal: bool,
    chunk_size: int = 64,
) -> Float[Array, "L N"]:
    r"""$o_t = q_t^\top S$, with $S = \sum_{r}\sum_{\tau} e^{A_t - A_\tau} k_{r\tau} v_{r\tau}^\top$ and
    $A_t = \sum_{u \le t}\ell_u$.

    Causal: the sum runs over $\tau \le t$ (the state after token $t$). Bidirectional: over all $\tau$, read
    after the last token ($A_t \to A_L$).

    **Arguments:**

    - `q`: (L, M) queries (features).
    - `keys`: (R, L, M), `values`: (R, L, N): R rank-one streams written per token.
    - `log_decay`: (L,) non-positive log decay $\ell_t$ applied when token t arrives.
    - `causal`, `chunk_size`: the causal algorithm works in chunks of this many tokens.

    **Returns:** (L, N).
    """
    L, M = q.shape
    A = jnp.cumsum(log_decay)
    if not causal:
        w = jnp.exp(A[-1] - A)
        state = jnp.einsum("t,rtm,rtn->mn", w, keys, values)
        return q @ state

    C = min(chunk_size, L)
    n_chunks = -(-L // C)
    pad = n_chunks * C - L
    if pad:
        q = jnp.pad(q, ((0, pad), (0, 0)))
        keys = jnp.pad(keys, ((0, 0), (0, pad), (0, 0)))
        values = jnp.pad(values, ((0, 0), (0, pad), (0, 0)))
        log_decay = jnp.pad(log_decay, (0, pad))
    R, N = keys.shape[0], values.shape[-1]
    qc = q.reshape(n_chunks, C, M)
    kc = keys.reshape(R, n_chunks, C, M).transpose(1, 0, 2, 3)
    vc = values.reshape(R, n_chunks, C, N).transpose(1, 0, 2, 3)

    # One chunk per scan step, carrying the state S (M, N) from chunk to chunk. The step is rematerialised in
    # the backward pass, so the gradient stores one state per chunk, never the (R, C, C) scores of every chunk.
    # (Inside a scan the rematerialisation needs no CSE barrier: JAX's documented `prevent_cse=False`.)
    @functools.partial(jax.checkpoint, prevent_cse=False)
    def chunk(state, inputs):
        return causal_chunk(state, *inputs)

    _, out = jax.lax.scan(chunk, jnp.zeros((M, N), q.dtype), (qc, kc, vc, log_decay.reshape(n_chunks, C)))
    return out.reshape(n_chunks * C, N)[:L]


def causal_chunk(
    state: Float[Array, "M N"],
    q: Float[Array, "C M"],
    keys: Float[Array, "R C M"],
    values: Float[Array, "R C N"],
    log_decay: Float[Array, " C"],
) -> tuple[Float[Array, "M N"], Float[Array, "C N"]]:
    r"""One chunk of the causal `linear_attention_state`: given the state $S$ after the tokens before the chunk,
    returns the state after its last token and its outputs $o_t = q_t^\top S_t$, exactly (quadratic in the
    chunk's length C, the decay inside the chunk taken from its own cumulative `log_decay`)."""
    C = q.shape[0]
    tril = jnp.tril(jnp.ones((C, C), dtype=bool))
    a = jnp.cumsum(log_decay)  # local cumulative log decay
    weights = jnp.where(tril, jnp.exp(jnp.where(tril, a[:, None] - a[None, :], 0.0)), 0.0)  # (C, C)
    scores = jnp.einsum("cm,rdm->rcd", q, keys) * weights
    out = jnp.einsum("rcd,rdv->cv", scores, values) + (q * jnp.exp(a)[:, None]) @ state
    to_end = jnp.exp(a[-1] - a)  # decay from each token to the chunk's end
    state = jnp.exp(a[-1]) * state + jnp.einsum("d,rdm,rdv->mv", to_end, keys, values)
    return state, out


def normalised_linear_attention(
    phi_q: Float[Array, "L M"],
    phi_k: Float[Array, "L M"],
    v: Float[Array, "L N"],
    log_decay: Float[Array, " L"],
    present: Bool[Array, " L"],
    *,
    causal: bool,
    chunk_size: int = 64,
) -> Float[Array, "L N"]:
    r"""$y_t = \sum_\tau w_{t\tau} v_\tau\,(\phi(q_t)\cdot\phi(k_\tau)) / \sum_\tau w_{t\tau}\,(\phi(q_t)\cdot\phi(k_\tau))$
    with decay weights $w$ and only `present` tokens; 0 where the denominator vanishes."""
    phi_k = jnp.where(present[:, None], phi_k, 0.0)
    values = jnp.concatenate([v, jnp.ones_like(v[:, :1])], axis=-1)
    out = linear_attention_state(phi_q, phi_k[None], values[None], log_decay, causal=causal, chunk_size=chunk_size)
    num, den = out[:, :-1], out[:, -1:]
    ok = den != 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)
