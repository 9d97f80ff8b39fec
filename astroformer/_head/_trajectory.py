"""Time courses of one read, for plotting and inspection."""

from typing import Literal

import diffrax
import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from .._validate import check_choice, check_int, check_mask, check_matrix
from ._block import full_memory, full_read, reduced_read
from ._observables import observables
from ._params import MAX_STEPS, NAParams
from ._write import write_reduced


class ReadTrajectory(eqx.Module):
    """The state of the network during the read of one query, at times `t` (real time, 0..T_r).

    Fields: `t` (T,), feature neurons `h` (T, M), outputs `x` (T, N), synaptic efficacies `s` (T, N, M),
    process calcium `p` (T, N, M).
    """

    t: Float[Array, " T"]
    h: Float[Array, "T M"]
    x: Float[Array, "T N"]
    s: Float[Array, "T N M"]
    p: Float[Array, "T N M"]


def read_trajectory(
    phi_q: Float[Array, "L M"],
    phi_k: Float[Array, "L M"],
    v: Float[Array, "L N"],
    params: NAParams,
    *,
    index: int = -1,
    num_points: int = 200,
    causal: bool = True,
    mask: Bool[Array, " L"] | None = None,
    state: Literal["reduced", "full"] = "reduced",
    solver: diffrax.AbstractSolver | None = None,
    read_steps: int = 64,
    max_steps: int = MAX_STEPS,
) -> ReadTrajectory:
    r"""Simulate the read of query `index` and return its time courses at `num_points` times in $[0, T_r]$.

    `state="full"` integrates the literal N×M state; `"reduced"` reconstructs it exactly from the O(M)
    reduction ($s_{ij} = c_{ij}\sigma_j$, $x = c z$, $p$ and $h$ in closed form); the two agree (tests).
    The reduced read is saved at the requested times by dense output of a `read_steps`-step Magnus solve, so
    use a generous `read_steps` for smooth curves.
    """
    check_choice("state", state, ("reduced", "full"))
    check_matrix("phi_q", phi_q)
    L, M = phi_q.shape
    check_matrix("phi_k", phi_k, rows=L, cols=M, rows_from="phi_q", cols_from="phi_q")
    check_matrix("v", v, rows=L, rows_from="phi_q")
    if not -L <= index < L:
        raise ValueError(f"index: expected a query index in [-{L}, {L}), got {index}")
    index = index % L
    num_points = check_int("num_points", num_points, minimum=2)  # t = 0 and at least one time after it
    present = check_mask(mask, L)
    phi_q = params.guard(phi_q, phi_q.dtype)
    N = v.shape[-1]
    # Log-spaced sample times: the transients are orders of magnitude faster than the read.
    u = jnp.concatenate([jnp.zeros(1, phi_q.dtype), jnp.geomspace(1e-4, 1.0, num_points - 1, dtype=phi_q.dtype)])
    saveat = diffrax.SaveAt(ts=u)
    mem_index = index if causal else L - 1
    if state == "full":
        opts = dict(solver=solver, stepsize_controller=None, adjoint=None, max_steps=max_steps, throw=True)
        c, g = full_memory(phi_k, v, params, present, **opts)
        sol = full_read(phi_q[index], c[mem_index], g[mem_index], params, saveat=saveat, **opts)
        h, x, s, p = sol.ys
    else:
        memory = write_reduced(phi_k, v, params, present)
        sol = reduced_read(
            phi_q,
            memory,
            params,
            N,
            causal=causal,
            solver=solver,
            stepsize_controller=None,
            adjoint=None,
            read_steps=read_steps,
            max_steps=max_steps,
            throw=True,
            saveat=saveat,
        )
        sigma, z = sol.ys  # (T, L, M) each
        obs = observables(phi_q, memory, params, sigma, z, u * params.t_read, causal=causal, queries=jnp.array([index]))
        h, x, s = obs["h"][:, 0], obs["x"][:, 0], obs["s"][:, 0]
        p = jnp.broadcast_to(obs["p"][:, 0, None, :], (num_points, N, M))  # p_ij = p_j for every i
    return ReadTrajectory(t=u * params.t_read, h=h, x=x, s=s, p=p)


def plot_read_trajectory(
    trajectory: ReadTrajectory, *, equilibrium: Float[Array, " N"] | None = None, max_lines: int = 8, fig=None
):
    """Plot calcium p, synapses s and outputs x of a read (matplotlib, an optional dependency).

    **Arguments:** `trajectory` from `read_trajectory`; `equilibrium` the x* to draw as dashed lines;
    `max_lines` the number of processes/synapses/neurons drawn per panel; `fig` an existing figure.

    **Returns:** the matplotlib figure.
    """
    try:
        import matplotlib

        if fig is None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("plot_read_trajectory needs matplotlib: pip install 'astroformer[plot]'") from err
    fig = plt.figure(figsize=(11, 3.4)) if fig is None else fig
    axes = fig.subplots(1, 3)
    t = trajectory.t
    n = max_lines
    p = trajectory.p.reshape(len(t), -1)[:, :n]
    s = trajectory.s.reshape(len(t), -1)[:, :n]
    axes[0].plot(t, p)
    axes[0].set(title="astrocyte process calcium $p_{ij}$")
    axes[1].plot(t, s)
    axes[1].set(title="synaptic efficacy $s_{ij}$")
    axes[2].plot(t, trajectory.x[:, :n])
    if equilibrium is not None:
        for i, value in enumerate(list(equilibrium[:n])):
            axes[2].axhline(float(value), color=f"C{i}", linestyle="--", linewidth=0.8)
    axes[2].set(title="output neurons $x_i$ (dashed: $x^*$)")
    for ax in axes:
        ax.set_xscale("symlog", linthresh=float(t[1]) if len(t) > 1 else 1e-4)
        ax.set(xlabel="read time", xlim=(0, float(t[-1])))
    fig.tight_layout()
    return fig
