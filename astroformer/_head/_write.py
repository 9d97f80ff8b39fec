r"""The write phase: tokens stream through the network and are stored in the synapses (c) and the astrocyte (g).

Each token t is presented for a window $T_w$ (r = 0): the feature neurons are driven by $\phi(k_t)$, the output
neurons by $v_t$, and the Hebbian trace and astrocyte weights integrate their activity (model.md §3). The
stream starts from rest and the neurons carry their state from one window to the next.

Two implementations, proven equal in the tests:

- `write_full`: the literal simulation, one diffrax solve of the full state (h, x, c, g) per window, streamed
  through a `lax.scan`; returns c (N×M) and g (M) after every token.
- `write_reduced`: the exact closed form. The write equations are linear with inputs constant inside a
  window, so every window's increment is $\Delta c = v K_1^\top + b K_2^\top$ and $\Delta g = M K_1$
  (see `hebbian_write_keys`); c and g are never formed.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from .._solvers._linear import decayed_recurrence
from ._equations import (
    feature_neurons_rhs,
    hebbian_rhs,
    hebbian_write_keys,
    output_neurons_rhs,
    weights_rhs,
    window_integrals,
    window_states,
)
from ._params import NAParams


class ReducedMemory(eqx.Module):
    r"""The written memory in reduced form.

    The Hebbian trace after token t is $c_t = \sum_{\tau\le t} e^{A_t - A_\tau}\sum_r V_{r\tau} K_{r\tau}^\top$
    and the astrocyte weights $g_t = \sum_{\tau\le t} e^{A_t - A_\tau} G_\tau$, with $A_t$ the cumulative
    `log_decay`.
    """

    keys: Float[Array, "2 L M"]
    values: Float[Array, "2 L N"]
    g_increments: Float[Array, "L M"]
    log_decay: Float[Array, " L"]

    def astrocyte_weights(self, initial: Float[Array, " M"] | None = None) -> Float[Array, "L M"]:
        r"""$g_t$ after each token, shape (L, M); from `initial` (g before the first token, (M,)) instead of 0 when
        given (a chunk of a longer sequence)."""
        return decayed_recurrence(self.log_decay, self.g_increments, initial)

    def read_weights(self, causal: bool) -> Float[Array, "L M"]:
        r"""The astrocyte weights each query's read starts from: $g_t$ after its own token (causal), or after the
        whole sequence for every query; shape (L, M)."""
        g = self.astrocyte_weights()
        return g if causal else jnp.broadcast_to(g[-1], g.shape)

    def hebbian_trace(self, t: int | Array) -> Float[Array, "N M"]:
        r"""$c_t$ after token `t` (0-based), formed explicitly: (N, M). For plots and tests, O(L N M)."""
        A = jnp.cumsum(self.log_decay)
        L = self.log_decay.shape[0]
        w = jnp.where(jnp.arange(L) <= t, jnp.exp(jnp.where(jnp.arange(L) <= t, A[t] - A, 0.0)), 0.0)
        return jnp.einsum("t,rtn,rtm->nm", w, self.values, self.keys)


def write_reduced(
    phi_k: Float[Array, "L M"], v: Float[Array, "L N"], params: NAParams, present: Bool[Array, " L"]
) -> ReducedMemory:
    """Exact closed-form write phase (see module docstring), from rest."""
    return write_reduced_from(phi_k, v, params, present, jnp.zeros_like(phi_k[0]), jnp.zeros_like(v[0]))[0]


def write_reduced_from(
    phi_k: Float[Array, "L M"],
    v: Float[Array, "L N"],
    params: NAParams,
    present: Bool[Array, " L"],
    h0: Float[Array, " M"],
    x0: Float[Array, " N"],
) -> tuple[ReducedMemory, tuple[Float[Array, " M"], Float[Array, " N"]]]:
    """`write_reduced` of a stream whose feature and output neurons start the first window at `h0`, `x0`
    (a chunk of a longer sequence): returns the chunk's memory and the neurons' states at the end of its last
    window (the next chunk's `h0`, `x0`)."""
    M = phi_k.shape[-1]
    log_relax = -jnp.asarray(params.t_write) / params.tau_n
    h_start, h_end = window_states(phi_k, present, log_relax, h0)
    x_start, x_end = window_states(v, present, log_relax, x0)
    k1, k2 = hebbian_write_keys(phi_k, h_start, window_integrals(params.t_write, params.tau_n, params.tau_f))
    live = present[:, None]
    k1 = jnp.where(live, k1, 0.0) / params.t_write
    k2 = jnp.where(live, k2, 0.0) / params.t_write
    keys = jnp.stack([k1, k2]) / M
    values = jnp.stack([v, x_start - v])
    log_decay = jnp.where(present, params.log_write_decay(), 0.0).astype(phi_k.dtype)
    return ReducedMemory(keys=keys, values=values, g_increments=k1, log_decay=log_decay), (h_end, x_end)


class WriteField(eqx.Module):
    r"""Full-state write vector field in window time $u = t/T_w \in [0, 1]$, state (h, x, c, g)."""

    params: NAParams

    def __call__(self, u, y, args):
        h, x, c, g = y
        phi, v = args
        p = self.params
        dh = feature_neurons_rhs(h, phi, p.tau_n)
        dx = output_neurons_rhs(x, v, p.tau_n)
        dc = hebbian_rhs(c, x, h, writing=1.0, t_write=p.t_write, tau_f=p.tau_f)
        dg = weights_rhs(g, h, writing=1.0, t_write=p.t_write, tau_f=p.tau_f)
        return jax.tree.map(lambda d: p.t_write * d, (dh, dx, dc, dg))


def write_full(
    phi_k: Float[Array, "L M"],
    v: Float[Array, "L N"],
    params: NAParams,
    present: Bool[Array, " L"],
    *,
    solver,
    stepsize_controller,
    adjoint,
    max_steps: int,
    dt0,
    throw: bool,
) -> tuple[Float[Array, "L N M"], Float[Array, "L M"], Array]:
    """Literal write phase: one diffrax solve per token window, streamed by `lax.scan`.

    **Returns:** `(c, g, result)`: c after each token (L, N, M), g after each token (L, M), and the worst
    diffrax result code (0 = success).
    """
    L, M = phi_k.shape
    N = v.shape[-1]
    dtype = phi_k.dtype
    term = diffrax.ODETerm(WriteField(params))
    y0 = (jnp.zeros(M, dtype), jnp.zeros(N, dtype), jnp.zeros((N, M), dtype), jnp.zeros(M, dtype))

    def window(y, inputs):
        phi, vt, live = inputs
        sol = diffrax.diffeqsolve(
            term,
            solver,
            jnp.asarray(0.0, dtype),  # times in the state's dtype: diffrax promotes the state to theirs
            jnp.asarray(1.0, dtype),
            dt0,
            y,
            args=(phi, vt),
            stepsize_controller=stepsize_controller,
            adjoint=adjoint,
            saveat=diffrax.SaveAt(t1=True),
            max_steps=max_steps,
            throw=throw,
        )
        y1 = jax.tree.map(lambda a, b: jnp.where(live, a[-1], b), sol.ys, y)
        return y1, (y1[2], y1[3], jnp.where(live, sol.result._value, 0))

    _, (c, g, results) = jax.lax.scan(window, y0, (phi_k, v, present))
    return c, g, jnp.max(results)
