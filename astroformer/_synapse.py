r"""Tripartite synapses: the Hebbian trace c and the synaptic efficacy s (model.md §3).

dc_ij/dt = (1 - r) x_i h_j / (M T_w) - c_ij / tau_f        (Hebbian trace, grows while writing)
tau_s ds_ij/dt = -p_ij s_ij + c_ij,     s_ij(0) = 0         (efficacy, relaxes to c_ij / p_ij while reading)
"""

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._special import exp_mean2


def hebbian_rhs(
    c: Float[Array, "N M"],
    x: Float[Array, " N"],
    h: Float[Array, " M"],
    *,
    writing: Float[ArrayLike, ""],
    t_write: Float[ArrayLike, ""],
    tau_f: Float[ArrayLike, ""] | None,
) -> Float[Array, "N M"]:
    r"""$dc_{ij}/dt = (1 - r)\,x_i h_j / (M T_w) - c_{ij}/\tau_f$ (`writing` $= 1 - r$)."""
    M = h.shape[-1]
    dc = writing * jnp.outer(x, h) / (M * t_write)
    return dc if tau_f is None else dc - c / tau_f


def efficacy_rhs(
    s: Float[Array, "N M"], p: Float[Array, "N M"], c: Float[Array, "N M"], tau_s: Float[ArrayLike, ""]
) -> Float[Array, "N M"]:
    r"""$ds_{ij}/dt = (-p_{ij} s_{ij} + c_{ij}) / \tau_s$."""
    return (c - p * s) / tau_s


def window_integrals(t_write, tau_n, tau_f):
    r"""$I_k = \int_0^{T_w} e^{-(T_w - s)/\tau_f - k s/\tau_n}\,ds$ for $k = 0, 1, 2$.

    These weigh the constant, once-decaying and twice-decaying parts of $x(s) h(s)^\top$ inside one write
    window, where $h(s) = \phi + (h_0 - \phi) e^{-s/\tau_n}$ and likewise for $x$.
    """
    t_write = jnp.asarray(t_write)
    forget = 0.0 if tau_f is None else t_write / tau_f
    return tuple(t_write * exp_mean2(forget, k * t_write / tau_n) for k in (0, 1, 2))


def hebbian_write_keys(
    phi_k: Float[Array, "L M"], h_start: Float[Array, "L M"], integrals
) -> tuple[Float[Array, "L M"], Float[Array, "L M"]]:
    r"""Exact increment of the Hebbian trace over each token's write window, as two rank-one terms.

    With $a = h_0 - \phi(k)$ and $b = x_0 - v$ (the neurons' distance from their targets at the window's
    start), integrating $dc/dt$ over the window gives

    $$\Delta c = v\,K_1^\top + b\,K_2^\top,\quad K_1 = \frac{I_0\phi + I_1 a}{M T_w},\quad
      K_2 = \frac{I_1\phi + I_2 a}{M T_w}.$$

    **Returns:** `(K1, K2)`, each (L, M), *before* division by $T_w$ (the caller divides by $M T_w$).
    """
    i0, i1, i2 = integrals
    a = h_start - phi_k
    return i0 * phi_k + i1 * a, i1 * phi_k + i2 * a
