r"""The observables of a read, reconstructed from the reduced state $(\sigma, z)$ of a solve (model.md §3).

With all-to-all diffusion the literal N×M read state is exactly (`astroformer._head._read`)

    h_j(t) = phi_j(q) (1 - e^{-t/tau_n})
    p_ij(t) = p_j(t) = p_bar + (p_j(0) - p_bar) e^{-N M t / tau_p},      p_j(0) = phi_j(q) g_j
    s_ij(t) = c_ij sigma_j(t),      x(t) = c z(t)

with c and g the Hebbian trace and astrocyte weights the query reads (after its own token when causal, after
the whole sequence otherwise). `read_trajectory` (one query, for plots) and `astroformer.fit.read_traces`
(every query, for fitting recordings) both go through `observables`.
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from .._solvers._linear import linear_attention_state
from ._equations import calcium_initial, calcium_mean, feature_rise, relaxing_calcium
from ._params import NAParams
from ._write import ReducedMemory


VARIABLES = ("x", "p", "s", "h")


def observables(
    phi_q: Float[Array, "L M"],
    memory: ReducedMemory,
    params: NAParams,
    sigma: Float[Array, "T L M"],
    z: Float[Array, "T L M"],
    t: Float[Array, " T"],
    *,
    causal: bool,
    variables: tuple[str, ...] = VARIABLES,
    queries: Int[Array, " K"] | None = None,
) -> dict[str, Array]:
    r"""The read's observables at real times `t` from its reduced state.

    **Arguments:**

    - `phi_q`: feature-neuron rates of every query, (L, M); `memory`: the written `ReducedMemory`.
    - `params`: the head's `NAParams`.
    - `sigma`, `z`: the reduced read state of every query at the times `t`, (T, L, M) each.
    - `t`: real times since the start of the read, (T,).
    - `causal`: as for `na_attention` (which memory each query reads).
    - `variables`: which of "x", "p", "s", "h" to return.
    - `queries`: optional query indices (K,) to reconstruct; all L by default. "s" costs O(T K N M).

    **Returns:** a dict with the requested variables, shapes (T, K, ·): `h` and `p` (T, K, M) (the calcium
    $p_{ij} = p_j$ is the same for every output neuron i), `s` (T, K, N, M), `x` (T, K, N).
    """
    L, M = phi_q.shape
    N = memory.values.shape[-1]
    if queries is None:
        index, phi = jnp.arange(L), phi_q
    else:
        index = jnp.asarray(queries)
        phi, sigma, z = phi_q[index], sigma[:, index], z[:, index]
    rows = index if causal else jnp.full_like(index, L - 1)  # the memory row each query reads
    tt = t[:, None, None]
    out = {}
    if "h" in variables:
        out["h"] = feature_rise(phi, tt, params.tau_n)
    if "p" in variables:
        g = memory.astrocyte_weights()[rows]
        p0 = calcium_initial(phi, g)
        out["p"] = relaxing_calcium(p0, calcium_mean(phi, g)[..., None], N * M / params.tau_p, tt)
    c = None
    if "s" in variables or ("x" in variables and queries is not None):
        c = jax.vmap(memory.hebbian_trace)(rows)  # (K, N, M)
    if "s" in variables:
        assert c is not None  # formed above whenever "s" is requested
        out["s"] = c[None] * sigma[:, :, None, :]
    if "x" in variables:
        if queries is None:  # every query: the causal linear-time readout, c never formed
            out["x"] = jax.vmap(
                lambda zt: linear_attention_state(zt, memory.keys, memory.values, memory.log_decay, causal=causal)
            )(z)
        else:
            out["x"] = jnp.einsum("knm,tkm->tkn", c, z)
    return out
