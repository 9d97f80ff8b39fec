r"""The astrocyte: presynaptic weights g and process calcium p (model.md §3).

    dg_j/dt = (1 - r) h_j / T_w - g_j / tau_f                      (neuron -> astrocyte weights, while writing)
    p_ij(0) = phi_j(q) g_j                                         (calcium entering each process on a read)
    tau_p dp_ij/dt = sum_kl T_ijkl (p_kl - p_ij),  T_ijkl = 1       (all-to-all diffusion)

Total calcium is conserved and, with all-to-all diffusion, every process converges at rate NM/tau_p to
p_bar = (1/NM) sum_ij p_ij(0) = (1/M) sum_j phi_j(q) g_j:

    p_ij(t) = p_bar + (p_ij(0) - p_bar) exp(-N M t / tau_p).
"""

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._special import psi


def weights_rhs(
    g: Float[Array, " M"],
    h: Float[Array, " M"],
    *,
    writing: Float[ArrayLike, ""],
    t_write: Float[ArrayLike, ""],
    tau_f: Float[ArrayLike, ""] | None,
) -> Float[Array, " M"]:
    r"""$dg_j/dt = (1 - r) h_j / T_w - g_j / \tau_f$."""
    dg = writing * h / t_write
    return dg if tau_f is None else dg - g / tau_f


def calcium_rhs(p: Float[Array, "N M"], tau_p: Float[ArrayLike, ""]) -> Float[Array, "N M"]:
    r"""$dp_{ij}/dt = \sum_{kl}(p_{kl} - p_{ij}) / \tau_p$ (literal all-to-all diffusion, $T_{ijkl} = 1$)."""
    return (jnp.sum(p) - p.size * p) / tau_p


def calcium_initial(phi_q: Float[Array, "*b M"], g: Float[Array, "*b M"]) -> Float[Array, "*b M"]:
    r"""$p_{\cdot j}(0) = \phi_j(q) g_j$ (the same for every output neuron i)."""
    return phi_q * g


def calcium_mean(phi_q: Float[Array, "*b M"], g: Float[Array, "*b M"]) -> Float[Array, "*b"]:
    r"""$\bar p = \frac{1}{M}\sum_j \phi_j(q) g_j$, the conserved mean calcium and the softmax denominator."""
    return jnp.mean(phi_q * g, axis=-1)


def relaxing_calcium(
    p0: Float[Array, "*b M"], p_bar: Float[Array, "*b 1"], rate: Float[ArrayLike, ""], t: Float[ArrayLike, "*t"]
) -> Float[Array, "*b M"]:
    r"""$p_j(t) = \bar p + (p_j(0) - \bar p)\,e^{-\kappa t}$, the closed-form calcium of a read with
    $\kappa = NM/\tau_p$ (`rate`, in the units of `t`). `t` broadcasts against `p0`."""
    return p_bar + (p0 - p_bar) * jnp.exp(-rate * t)


def calcium_window_mean(
    p0: Float[Array, "*b M"],
    p_bar: Float[Array, "*b 1"],
    rate: Float[ArrayLike, ""],
    t0: Float[ArrayLike, ""],
    dt: Float[ArrayLike, ""],
) -> Float[Array, "*b M"]:
    r"""Exact mean of $p_j(t) = \bar p + (p_j(0) - \bar p) e^{-\kappa t}$ over $[t_0, t_0 + \Delta t]$,
    with $\kappa = NM/\tau_p$ (`rate`): $\bar p + (p_j(0) - \bar p)\,e^{-\kappa t_0}\,\psi(\kappa\Delta t)$."""
    return p_bar + (p0 - p_bar) * jnp.exp(-rate * t0) * psi(rate * dt)
