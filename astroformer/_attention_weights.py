r"""Attention weights of one head, softmax and kernelised, and the two distances used to compare them.

$$a^{\mathrm{sm}}_{t\tau} = \frac{e^{q_t\cdot k_\tau}}{\sum_{\tau'} e^{q_t\cdot k_{\tau'}}},\qquad
  a^{\phi}_{t\tau} = \frac{\phi(q_t)\cdot\phi(k_\tau)}{\sum_{\tau'} \phi(q_t)\cdot\phi(k_{\tau'})},$$

over the keys $\tau$ a query may see ($\tau \le t$ if causal, and not masked). The neuron–astrocyte head's
equilibrium output is $\sum_\tau a^{\phi}_{t\tau} v_\tau$ (model.md §3), so $a^\phi$ are its attention weights.
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float


def _allowed(L: int, causal: bool, mask):
    allowed = jnp.tril(jnp.ones((L, L), bool)) if causal else jnp.ones((L, L), bool)
    return allowed if mask is None else allowed & mask[None, :]


def softmax_weights(
    q: Float[Array, "L D"], k: Float[Array, "L D"], *, causal: bool = True, mask: Bool[Array, " L"] | None = None
) -> Float[Array, "L L"]:
    """Softmax attention weights $a^{\\mathrm{sm}}$ (rows: queries), zero where a key is not visible."""
    allowed = _allowed(q.shape[0], causal, mask)
    return jax.nn.softmax(jnp.where(allowed, q @ k.T, -jnp.inf), axis=-1, where=allowed)


def kernel_weights(
    phi_q: Float[Array, "L M"],
    phi_k: Float[Array, "L M"],
    *,
    causal: bool = True,
    mask: Bool[Array, " L"] | None = None,
) -> Float[Array, "L L"]:
    """Kernel (linear-attention) weights $a^\\phi$ from feature rates (L, M), zero where a key is not visible."""
    allowed = _allowed(phi_q.shape[0], causal, mask)
    kernel = jnp.where(allowed, phi_q @ phi_k.T, 0.0)
    total = jnp.sum(kernel, axis=-1, keepdims=True)
    return kernel / jnp.where(total > 0, total, 1.0)


def weights_cross_entropy(
    phi_q: Float[Array, "L M"],
    phi_k: Float[Array, "L M"],
    q: Float[Array, "L D"],
    k: Float[Array, "L D"],
    *,
    causal: bool = True,
    mask: Bool[Array, " L"] | None = None,
) -> Float[Array, ""]:
    r"""Hedgehog's distillation loss: $-\frac{1}{L}\sum_t \sum_\tau a^{\mathrm{sm}}_{t\tau} \log a^\phi_{t\tau}$,
    the cross-entropy of the kernel weights against the softmax weights (rows of visible keys; minimised,
    over $\phi$, exactly when $a^\phi = a^{\mathrm{sm}}$)."""
    allowed = _allowed(q.shape[0], causal, mask)
    target = softmax_weights(q, k, causal=causal, mask=mask)
    tiny = jnp.finfo(phi_q.dtype).tiny
    log_kernel = jnp.log(jnp.maximum(phi_q @ phi_k.T, tiny))
    log_total = jax.nn.logsumexp(jnp.where(allowed, log_kernel, -jnp.inf), axis=-1, keepdims=True)
    rows = -jnp.sum(jnp.where(allowed, target * (log_kernel - log_total), 0.0), axis=-1)
    present = jnp.any(allowed, axis=-1) if mask is None else mask & jnp.any(allowed, axis=-1)
    return jnp.sum(jnp.where(present, rows, 0.0)) / jnp.maximum(jnp.sum(present), 1)


def total_variation(a: Float[Array, "*batch L L"], b: Float[Array, "*batch L L"]) -> Float[Array, "*batch L"]:
    r"""Total-variation distance of each row, $\frac12\sum_\tau |a_{t\tau} - b_{t\tau}|$, in [0, 1]."""
    return 0.5 * jnp.sum(jnp.abs(a - b), axis=-1)


def log_normaliser_mse(
    phi_q: Float[Array, "L M"],
    phi_k: Float[Array, "L M"],
    q: Float[Array, "L D"],
    k: Float[Array, "L D"],
    *,
    causal: bool = True,
    mask: Bool[Array, " L"] | None = None,
) -> Float[Array, ""]:
    r"""Mean over queries of $\big(\log\sum_\tau \phi(q_t)\cdot\phi(k_\tau) - \log\sum_\tau e^{q_t\cdot k_\tau}\big)^2$:
    how far the astrocyte response is from the softmax normaliser, on a log scale."""
    allowed = _allowed(q.shape[0], causal, mask)
    tiny = jnp.finfo(phi_q.dtype).tiny
    astro = jnp.log(jnp.maximum(jnp.sum(jnp.where(allowed, phi_q @ phi_k.T, 0.0), axis=-1), tiny))
    exact = jax.nn.logsumexp(jnp.where(allowed, q @ k.T, -jnp.inf), axis=-1)
    present = jnp.any(allowed, axis=-1) if mask is None else mask & jnp.any(allowed, axis=-1)
    err = jnp.where(present, astro - jnp.where(present, exact, 0.0), 0.0)
    return jnp.sum(err**2) / jnp.maximum(jnp.sum(present), 1)
