r"""Time courses of every query's read at arbitrary observation times, for fitting against recordings.

The read of each query starts from rest after its tokens have been written (model.md §3). In the exact
reduction ($p_{ij} = p_j$, $s_{ij} = c_{ij}\sigma_j$, $x = c\,z$; see `astroformer._head._read`) the state is
$(\sigma, z)$, each (L, M); the observed variables are reconstructed from it:

    h_j(t) = phi_j(q) (1 - e^{-t/tau_n})
    p_j(t) = p_bar + (p_j(0) - p_bar) e^{-N M t / tau_p},      p_j(0) = phi_j(q) g_j
    s_ij(t) = c_ij sigma_j(t),      x(t) = c z(t)

Observation times are real times $0 \le t_1 < \dots < t_K$. The dynamics are autonomous in real time, so
the traces do not depend on the read window $T_r$ at all (it only says where the block stops reading): the
solve runs over $[0, t_K]$ whatever `params.t_read` is. This is why $T_r$ is not identifiable from traces.
"""

import diffrax
import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from .._head._block import reduced_read
from .._head._observables import VARIABLES, observables
from .._head._params import NAParams
from .._head._write import write_reduced
from .._validate import check_head_inputs, check_int


class Traces(eqx.Module):
    """Observed time courses of all L reads at times `ts` (real time). A variable not requested is `None`.

    - `x`: output neurons, (T, L, N).
    - `p`: process calcium $p_{ij} = p_j$ (the same for every output neuron i), (T, L, M).
    - `s`: synaptic efficacies, (T, L, N, M).
    - `h`: feature neurons, (T, L, M).
    """

    ts: Float[Array, " T"]
    x: Float[Array, "T L N"] | None = None
    p: Float[Array, "T L M"] | None = None
    s: Float[Array, "T L N M"] | None = None
    h: Float[Array, "T L M"] | None = None


def check_times(ts) -> np.ndarray:
    """Observation times must be concrete, 1-D, finite, non-negative, strictly increasing, last one > 0."""
    try:
        arr = np.asarray(ts, dtype=float)
    except Exception:  # a tracer or an unconvertible object
        raise TypeError(
            f"ts: expected a concrete 1-D array of observation times (not traced), got {type(ts).__name__}"
        ) from None
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"ts: expected a non-empty 1-D array of times, got shape {arr.shape}")
    if not (np.all(np.isfinite(arr)) and np.all(arr >= 0) and np.all(np.diff(arr) > 0) and arr[-1] > 0):
        raise ValueError(f"ts: expected finite, non-negative, strictly increasing times, got {arr!r}")
    return arr


def step_grid(ts: np.ndarray, substeps: int) -> tuple[np.ndarray, np.ndarray]:
    r"""Fixed step grid in units of $t_K$: `substeps` steps inside every gap between observation times,
    geometric in the first gap (which holds the fast transients of $h$ and $p$), uniform afterwards.
    Independent of the parameters, so the loss is a smooth function of them.

    **Returns:** `(grid, save)`: the grid (starting at 0, ending at 1) and the save times, both in $[0, 1]$.
    """
    save = ts / ts[-1]
    knots = save if save[0] == 0 else np.concatenate([[0.0], save])
    first = np.geomspace(1e-3, 1.0, substeps)
    pieces = [knots[0] + (knots[1] - knots[0]) * np.concatenate([[0.0], first])]
    frac = np.arange(1, substeps + 1) / substeps
    for a, b in zip(knots[1:-1], knots[2:]):
        pieces.append(a + (b - a) * frac)
    grid = np.concatenate(pieces)
    grid[-1] = 1.0
    return grid, save


def read_traces(
    phi_q: Float[Array, "L M"],
    phi_k: Float[Array, "L M"],
    v: Float[Array, "L N"],
    params: NAParams,
    ts,
    *,
    causal: bool = True,
    mask: Bool[Array, " L"] | None = None,
    variables: tuple[str, ...] = ("x", "p", "s"),
    adjoint: diffrax.AbstractAdjoint | None = None,
    substeps: int = 4,
) -> Traces:
    r"""Simulate the read of every query and sample it at the real times `ts`.

    **Arguments:**

    - `phi_q`, `phi_k`: feature-neuron rates, (L, M), non-negative; `v`: values, (L, N).
    - `params`: an `NAParams` (its `t_read` is not used, see the module docstring).
    - `ts`: concrete observation times, (T,), strictly increasing, $\ge 0$.
    - `causal`, `mask`: as for `na_attention`.
    - `variables`: which of "x", "p", "s", "h" to return (the others are `None`; "s" costs O(T L² N M)).
    - `adjoint`: the diffrax adjoint (default `RecursiveCheckpointAdjoint` with one checkpoint per step);
      `DirectAdjoint()` and `ForwardMode()` (differentiate with `jax.jacfwd`) also work.
    - `substeps`: `Magnus2` steps between consecutive observation times.

    **Returns:** a `Traces`.

    Uses the same write (`write_reduced`), read field and `Magnus2` solver as `na_attention`, on a step
    grid that contains every observation time.
    """
    for name in variables:
        if name not in VARIABLES:
            raise ValueError(f"variables: expected names among {VARIABLES}, got {name!r}")
    substeps = check_int("substeps", substeps)
    ts = check_times(ts)
    # Shapes, mask and (at run time) finite, non-negative rates, as na_attention checks them.
    phi_q, phi_k, v, present = check_head_inputs(phi_q, phi_k, v, mask)
    N = v.shape[-1]
    dtype = phi_q.dtype
    grid, save = step_grid(ts, substeps)
    t_end = jnp.asarray(ts[-1], dtype)
    read_params = eqx.tree_at(lambda p: p.t_read, params, t_end)  # solve over [0, t_K] in real time

    memory = write_reduced(phi_k, v, params, present)
    adjoint = diffrax.RecursiveCheckpointAdjoint(checkpoints=len(grid) - 1) if adjoint is None else adjoint
    sol = reduced_read(
        phi_q,
        memory,
        read_params,
        N,
        causal=causal,
        solver=None,
        stepsize_controller=diffrax.StepTo(ts=jnp.asarray(grid, dtype)),
        adjoint=adjoint,
        read_steps=len(grid) - 1,
        max_steps=len(grid) - 1,
        throw=True,
        saveat=diffrax.SaveAt(ts=jnp.asarray(save, dtype)),
    )
    sigma, z = sol.ys  # (T, L, M) each
    out = observables(
        phi_q, memory, params, sigma, z, jnp.asarray(ts, dtype), causal=causal, variables=tuple(variables)
    )
    return Traces(ts=jnp.asarray(ts, dtype), **out)


__all__ = ["Traces", "read_traces"]
