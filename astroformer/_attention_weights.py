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


def _present_mean(values: Float[Array, " L"], allowed, mask) -> Float[Array, ""]:
    """Mean of `values` over the queries that are present and see at least one key."""
    present = jnp.any(allowed, axis=-1) if mask is None else mask & jnp.any(allowed, axis=-1)
    return jnp.sum(jnp.where(present, values, 0.0)) / jnp.maximum(jnp.sum(present), 1)


def _log_kernel(phi_q: Float[Array, "L M"], phi_k: Float[Array, "L M"]) -> tuple[Array, Array]:
    r"""`(log_kernel, overlap)`: $\log \phi(q_t)\cdot\phi(k_\tau)$ for every pair (L, L), finite where the products of
    the rates overflow the dtype (rates near $e^{45}$ in float32).

    Each query's and each key's largest rate, where above 1, is factored out of the product and its log added
    back. The factors are constants to differentiation (the result is exact, so its derivatives are too) and never
    below 1, so dividing by them cannot overflow a gradient. `overlap` is False where the product is 0 (no feature
    active for both); `log_kernel` is there the log of the dtype's smallest normal number."""
    tiny = jnp.finfo(phi_q.dtype).tiny
    scale_q = jax.lax.stop_gradient(jnp.maximum(jnp.max(phi_q, axis=-1, keepdims=True), 1.0))
    scale_k = jax.lax.stop_gradient(jnp.maximum(jnp.max(phi_k, axis=-1, keepdims=True), 1.0))
    scaled = (phi_q / scale_q) @ (phi_k / scale_k).T
    overlap = scaled > 0
    log_scaled = jnp.log(jnp.maximum(scaled, tiny)) + jnp.log(scale_q) + jnp.log(scale_k).T
    return jnp.where(overlap, log_scaled, jnp.log(tiny)), overlap


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
    log_kernel, overlap = _log_kernel(phi_q, phi_k)
    use = allowed & overlap
    top = jax.lax.stop_gradient(jnp.max(jnp.where(use, log_kernel, -jnp.inf), axis=-1, keepdims=True))
    kernel = jnp.where(use, jnp.exp(log_kernel - jnp.where(jnp.isfinite(top), top, 0.0)), 0.0)
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
    log_kernel, _ = _log_kernel(phi_q, phi_k)
    log_total = jax.nn.logsumexp(jnp.where(allowed, log_kernel, -jnp.inf), axis=-1, keepdims=True)
    rows = -jnp.sum(jnp.where(allowed, target * (log_kernel - log_total), 0.0), axis=-1)
    return _present_mean(rows, allowed, mask)


def total_variation(a: Float[Array, "*batch L L"], b: Float[Array, "*batch L L"]) -> Float[Array, "*batch L"]:
    r"""Total-variation distance of each row, $\frac12\sum_\tau |a_{t\tau} - b_{t\tau}|$, in [0, 1]."""
    return 0.5 * jnp.sum(jnp.abs(a - b), axis=-1)


def log_astrocyte_response(
    phi_q: Float[Array, "L M"],
    phi_k: Float[Array, "L M"],
    *,
    causal: bool = True,
    mask: Bool[Array, " L"] | None = None,
) -> Float[Array, " L"]:
    r"""$\log A_t$ of the astrocyte response $A_t = \sum_\tau \phi(q_t)\cdot\phi(k_\tau) = \phi(q_t)\cdot g
    = M\,\bar p_t$ (model.md §3: the calcium mean times M) for every query, over the keys it may see.

    Finite where $A_t$ itself overflows the dtype (`_log_kernel`); $\log$ of the dtype's smallest normal number
    where no visible key has any overlap with the query."""
    allowed = _allowed(phi_q.shape[0], causal, mask)
    log_kernel, overlap = _log_kernel(phi_q, phi_k)
    use = allowed & overlap
    some = jnp.any(use, axis=-1)
    log_response = jax.nn.logsumexp(jnp.where(use | ~some[:, None], log_kernel, -jnp.inf), axis=-1)
    return jnp.where(some, log_response, jnp.log(jnp.finfo(phi_q.dtype).tiny))


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
    astro = log_astrocyte_response(phi_q, phi_k, causal=causal, mask=mask)
    exact = jax.nn.logsumexp(jnp.where(allowed, q @ k.T, -jnp.inf), axis=-1)
    present = jnp.any(allowed, axis=-1)
    return _present_mean((astro - jnp.where(present, exact, 0.0)) ** 2, allowed, mask)


def response_excess(
    phi_q: Float[Array, "L M"],
    phi_k: Float[Array, "L M"],
    cap: float,
    *,
    causal: bool = True,
    mask: Bool[Array, " L"] | None = None,
) -> Float[Array, ""]:
    r"""Mean over queries of $\max(0,\ \log A_t - \mathrm{cap})^2$, $A_t$ the astrocyte response
    (`log_astrocyte_response`): a penalty, zero while every response stays below $e^{\mathrm{cap}}$, that pushes
    a fitted feature map's responses back under the cap on the text it is fitted on (softly: not a guarantee for
    other text)."""
    allowed = _allowed(phi_q.shape[0], causal, mask)
    excess = jax.nn.relu(log_astrocyte_response(phi_q, phi_k, causal=causal, mask=mask) - cap)
    return _present_mean(excess**2, allowed, mask)
