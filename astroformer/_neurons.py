r"""Feature (hidden) neurons h and output neurons x (model.md §3).

    tau_n dh/dt = -h + phi(u(t))                                  (feature neurons)
    tau_n dx/dt = -x + r * sum_j s_ij h_j + (1 - r) * v(t)         (output neurons)

`u` is the current key while writing (r = 0) and the query while reading (r = 1).
"""

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float

from ._linear import linear_recurrence
from ._special import psi


def feature_neurons_rhs(
    h: Float[Array, " M"], phi_u: Float[Array, " M"], tau_n: Float[ArrayLike, ""]
) -> Float[Array, " M"]:
    r"""$dh/dt = (-h + \phi(u)) / \tau_n$."""
    return (phi_u - h) / tau_n


def output_neurons_rhs(
    x: Float[Array, " N"], drive: Float[Array, " N"], tau_n: Float[ArrayLike, ""]
) -> Float[Array, " N"]:
    r"""$dx/dt = (-x + \mathrm{drive}) / \tau_n$, with drive $= \sum_j s_{ij} h_j$ (read) or $v$ (write)."""
    return (drive - x) / tau_n


def feature_rise(
    phi_q: Float[Array, "*b M"], t: Float[ArrayLike, "*t"], tau_n: Float[ArrayLike, ""]
) -> Float[Array, "*b M"]:
    r"""$h_j(t) = \phi_j(q)\,(1 - e^{-t/\tau_n})$: the feature neurons of a read, from rest, in closed form
    (the solution of $\tau_n \dot h = -h + \phi(q)$, $h(0) = 0$). `t` broadcasts against `phi_q`."""
    return phi_q * -jnp.expm1(-t / tau_n)


def feature_rise_mean(
    phi_q: Float[Array, "*b M"], t0: Float[ArrayLike, ""], dt: Float[ArrayLike, ""], tau_n: Float[ArrayLike, ""]
) -> Float[Array, "*b M"]:
    r"""Exact mean of `feature_rise` over $[t_0, t_0 + \Delta t]$:
    $\phi_j(q)\,(1 - e^{-t_0/\tau_n}\,\psi(\Delta t/\tau_n))$, with $\psi(x) = (1 - e^{-x})/x$."""
    return phi_q * (1.0 - jnp.exp(-t0 / tau_n) * psi(dt / tau_n))


def window_start_states(
    targets: Float[Array, "L K"], present: Bool[Array, " L"], relax: Float[ArrayLike, ""]
) -> Float[Array, "L K"]:
    r"""State of a population $\tau_n \dot y = -y + y^\star_t$ at the start of each token's write window.

    The stream starts from rest ($y = 0$) and windows follow each other without gaps, so at the start of
    window $t$: $y_t = E\,y_{t-1} + (1 - E)\,y^\star_{t-1}$ with $E = e^{-T_w/\tau_n}$ (`relax`), an exact
    linear recurrence solved by a parallel (associative) scan. A token that is not `present` is skipped: no
    time passes and the state carries over.

    **Arguments:**

    - `targets`: $y^\star_t$ for each token, shape (L, K) (e.g. $\phi(k_t)$ or $v_t$).
    - `present`: which tokens are presented, shape (L,).
    - `relax`: $E = e^{-T_w/\tau_n}$.

    **Returns:** the state at the start of each window, shape (L, K); row 0 is zero.
    """
    relax = jnp.asarray(relax, targets.dtype)
    a = jnp.where(present, relax, 1.0)[:, None] * jnp.ones_like(targets)
    b = jnp.where(present[:, None], (1 - relax) * targets, 0.0)
    # Shift by one: the state at the start of window t depends on windows < t.
    a = jnp.concatenate([jnp.ones_like(a[:1]), a[:-1]])
    b = jnp.concatenate([jnp.zeros_like(b[:1]), b[:-1]])
    return linear_recurrence(a, b)
