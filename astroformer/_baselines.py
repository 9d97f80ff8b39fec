"""Reference attention kinds in the calling convention of `na_attention` (one head, (L, ·) arrays)."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from ._solvers._linear import normalised_linear_attention
from ._validate import check_head_inputs, check_mask, check_matrix


def softmax_attention(
    q: Float[Array, "L D"],
    k: Float[Array, "L D"],
    v: Float[Array, "L N"],
    *,
    causal: bool = True,
    mask: Bool[Array, " L"] | None = None,
) -> Float[Array, "L N"]:
    r"""Exact softmax attention $\mathrm{softmax}(q k^\top) v$ through `jax.nn.dot_product_attention`.

    `q` and `k` are expected already scaled by $D^{-1/4}$ each (as for the neuron–astrocyte block), so no
    further temperature is applied. `mask` (L,) marks the keys that may be attended to.
    """
    check_matrix("q", q)
    L, D = q.shape
    check_matrix("k", k, rows=L, cols=D, rows_from="q", cols_from="q")
    check_matrix("v", v, rows=L, rows_from="q")
    key_mask = None if mask is None else check_mask(mask, L)[None, None, None, :]
    N = v.shape[-1]
    width = max(D, N)  # dot_product_attention wants one head size; zero padding changes no q.k
    q, k, v = (jnp.pad(a, ((0, 0), (0, width - a.shape[-1])))[None, :, None] for a in (q, k, v))
    out = jax.nn.dot_product_attention(q, k, v, scale=1.0, is_causal=causal, mask=key_mask)
    return out[0, :, 0, :N]


def linear_attention(
    phi_q: Float[Array, "L M"],
    phi_k: Float[Array, "L M"],
    v: Float[Array, "L N"],
    *,
    causal: bool = True,
    mask: Bool[Array, " L"] | None = None,
    chunk_size: int = 64,
) -> Float[Array, "L N"]:
    r"""Kernelised linear attention (Katharopoulos et al. 2020) on feature maps:
    $y_t = \sum_\tau v_\tau\,\phi(q_t)\cdot\phi(k_\tau) / \sum_\tau \phi(q_t)\cdot\phi(k_\tau)$, linear in L
    (chunked). With non-negative features it equals `na_attention(..., mode="equilibrium")` without forgetting.
    """
    phi_q, phi_k, v, present = check_head_inputs(phi_q, phi_k, v, mask, nonnegative=False)
    return normalised_linear_attention(
        phi_q, phi_k, v, jnp.zeros(phi_q.shape[0], phi_q.dtype), present, causal=causal, chunk_size=chunk_size
    )
