r"""The equations of one neuron–astrocyte head (model.md §3), one function per term.

**Neurons.** Feature (hidden) neurons h and output neurons x:

    tau_n dh/dt = -h + phi(u(t))                                  (feature neurons)
    tau_n dx/dt = -x + r * sum_j s_ij h_j + (1 - r) * v(t)         (output neurons)

`u` is the current key while writing (r = 0) and the query while reading (r = 1).

**Tripartite synapses.** The Hebbian trace c and the synaptic efficacy s:

    dc_ij/dt = (1 - r) x_i h_j / (M T_w) - c_ij / tau_f        (Hebbian trace, grows while writing)
    tau_s ds_ij/dt = -p_ij s_ij + c_ij,     s_ij(0) = 0         (efficacy, relaxes to c_ij / p_ij while reading)

**The astrocyte.** Presynaptic weights g and process calcium p:

    dg_j/dt = (1 - r) h_j / T_w - g_j / tau_f                      (neuron -> astrocyte weights, while writing)
    p_ij(0) = phi_j(q) g_j                                         (calcium entering each process on a read)
    tau_p dp_ij/dt = sum_kl T_ijkl (p_kl - p_ij),  T_ijkl = 1       (all-to-all diffusion)

Total calcium is conserved and, with all-to-all diffusion, every process converges at rate NM/tau_p to
p_bar = (1/NM) sum_ij p_ij(0) = (1/M) sum_j phi_j(q) g_j:

    p_ij(t) = p_bar + (p_ij(0) - p_bar) exp(-N M t / tau_p).
"""

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float

from .._solvers._linear import decayed_recurrence
from .._solvers._special import exp_mean2, psi

# Neurons


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
    return phi_q * -jnp.expm1(-(t / tau_n))


def feature_rise_mean(
    phi_q: Float[Array, "*b M"], t0: Float[ArrayLike, ""], dt: Float[ArrayLike, ""], tau_n: Float[ArrayLike, ""]
) -> Float[Array, "*b M"]:
    r"""Exact mean of `feature_rise` over $[t_0, t_0 + \Delta t]$:
    $\phi_j(q)\,(1 - e^{-t_0/\tau_n}\,\psi(\Delta t/\tau_n))$, with $\psi(x) = (1 - e^{-x})/x$."""
    return phi_q * (1.0 - jnp.exp(-(t0 / tau_n)) * psi(dt / tau_n))


def window_start_states(
    targets: Float[Array, "L K"], present: Bool[Array, " L"], relax: Float[ArrayLike, ""]
) -> Float[Array, "L K"]:
    r"""State of a population $\tau_n \dot y = -y + y^\star_t$ at the start of each token's write window.

    The stream starts from rest ($y = 0$) and windows follow each other without gaps, so at the start of
    window $t$: $y_t = E\,y_{t-1} + (1 - E)\,y^\star_{t-1}$ with $E = e^{-T_w/\tau_n}$ (`relax`), an exact
    linear recurrence (`decayed_recurrence`). A token that is not `present` is skipped: no
    time passes and the state carries over.

    **Arguments:**

    - `targets`: $y^\star_t$ for each token, shape (L, K) (e.g. $\phi(k_t)$ or $v_t$).
    - `present`: which tokens are presented, shape (L,).
    - `relax`: $E = e^{-T_w/\tau_n}$.

    **Returns:** the state at the start of each window, shape (L, K); row 0 is zero.
    """
    return window_states(targets, present, jnp.log(jnp.asarray(relax, targets.dtype)), jnp.zeros_like(targets[0]))[0]


def window_states(
    targets: Float[Array, "L K"],
    present: Bool[Array, " L"],
    log_relax: Float[ArrayLike, ""],
    initial: Float[Array, " K"],
) -> tuple[Float[Array, "L K"], Float[Array, " K"]]:
    r"""`window_start_states` of a stream that starts from `initial` (the state at the start of the first
    window) instead of rest, e.g. one chunk of a longer sequence, with the relaxation given by its log,
    $\log E = -T_w/\tau_n$ (`log_relax`; exact where $E$ itself underflows): returns the state at the start of
    each window, (L, K) (row 0 is `initial`), and at the end of the last one, (K,) (the next chunk's
    `initial`)."""
    log_relax = jnp.asarray(log_relax, targets.dtype)
    log_a = jnp.where(present, log_relax, 0.0)  # one factor per token; an absent token takes no time
    b = jnp.where(present[:, None], -jnp.expm1(log_relax) * targets, 0.0)  # (1 - E) y*
    after = decayed_recurrence(log_a, b, initial)  # the state at the end of each window
    return jnp.concatenate([initial[None].astype(after.dtype), after[:-1]]), after[-1]


# Tripartite synapses


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
    dc = jnp.outer(x, h) * writing / (M * t_write)
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


# The astrocyte


def weights_rhs(
    g: Float[Array, " M"],
    h: Float[Array, " M"],
    *,
    writing: Float[ArrayLike, ""],
    t_write: Float[ArrayLike, ""],
    tau_f: Float[ArrayLike, ""] | None,
) -> Float[Array, " M"]:
    r"""$dg_j/dt = (1 - r) h_j / T_w - g_j / \tau_f$."""
    dg = h * writing / t_write
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
) -> Float[Array, "... M"]:
    r"""$p_j(t) = \bar p + (p_j(0) - \bar p)\,e^{-\kappa t}$, the closed-form calcium of a read with
    $\kappa = NM/\tau_p$ (`rate`, in the units of `t`). `t` broadcasts against `p0`."""
    return p_bar + (p0 - p_bar) * jnp.exp(jnp.negative(rate * t))


def calcium_window_mean(
    p0: Float[Array, "*b M"],
    p_bar: Float[Array, "*b 1"],
    rate: Float[ArrayLike, ""],
    t0: Float[ArrayLike, ""],
    dt: Float[ArrayLike, ""],
) -> Float[Array, "*b M"]:
    r"""Exact mean of $p_j(t) = \bar p + (p_j(0) - \bar p) e^{-\kappa t}$ over $[t_0, t_0 + \Delta t]$,
    with $\kappa = NM/\tau_p$ (`rate`): $\bar p + (p_j(0) - \bar p)\,e^{-\kappa t_0}\,\psi(\kappa\Delta t)$."""
    return p_bar + (p0 - p_bar) * jnp.exp(jnp.negative(rate * t0)) * psi(rate * dt)
