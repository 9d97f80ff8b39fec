"""One neuron–astrocyte attention head: write phase, then one read per query (model.md §3–4)."""

from typing import Literal

import diffrax
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from jaxtyping import Array, Bool, Float

from .._solvers._linear import causal_chunk, linear_attention_state, normalised_linear_attention
from .._solvers._magnus import Magnus2
from .._validate import check_bool, check_choice, check_head_inputs, check_output, check_int
from ._equations import calcium_initial, calcium_mean
from ._params import MAX_STEPS, READ_STEPS, NAParams
from ._read import FullReadField, ReducedReadField, RelaxingCalcium, read_grid, solve_read
from ._write import ReducedMemory, write_full, write_reduced, write_reduced_from


def na_attention(
    phi_q: Float[Array, "L M"],
    phi_k: Float[Array, "L M"],
    v: Float[Array, "L N"],
    params: NAParams,
    *,
    causal: bool = True,
    mode: Literal["ode", "equilibrium"] = "ode",
    mask: Bool[Array, " L"] | None = None,
    state: Literal["reduced", "full"] = "reduced",
    solver: diffrax.AbstractSolver | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    adjoint: diffrax.AbstractAdjoint | None = None,
    read_steps: int = READ_STEPS,
    max_steps: int = MAX_STEPS,
    chunk_size: int = 64,
    throw: bool = True,
) -> Float[Array, "L N"]:
    r"""Attention computed by a network of neurons, tripartite synapses and one astrocyte.

    Tokens are written one window $T_w$ each into the synaptic trace $c$ and the astrocyte weights $g$; each
    query $t$ is then read from rest for a window $T_r$ and the block returns the output neurons' rates
    $x(T_r)$ (model.md §3). In the limit of fast neurons and long reads this is random-feature attention
    with the astrocyte as the normaliser:

    $$x^*_t = \frac{\sum_{\tau} v_\tau\,\phi(q_t)\cdot\phi(k_\tau)}{\sum_\tau \phi(q_t)\cdot\phi(k_\tau)}
      \approx \mathrm{softmax}(q_t K^\top) V.$$

    **Arguments:**

    - `phi_q`, `phi_k`: feature-neuron rates $\phi(q_t)$, $\phi(k_t)$, shape (L, M), non-negative.
    - `v`: values, shape (L, N).
    - `params`: an `NAParams`.
    - `causal`: if True the read of query t follows the write of token t; otherwise all queries are read
      after the whole sequence.
    - `mode`: `"ode"` simulates the equations; `"equilibrium"` returns the closed-form fixed point $x^*$.
    - `mask`: optional (L,) booleans; a False token is not presented (its window writes nothing).
    - `state`: `"reduced"` (default, exact O(M) reduction, equal to the full model, see the tests) or
      `"full"` (the literal N×M synapses and N×M calcium processes; for validation and small sizes).
    - `solver`, `stepsize_controller`, `adjoint`: diffrax options. Reduced default: `Magnus2()` on a fixed
      geometric grid of `read_steps` steps (unconditionally stable), solved in step time and differentiated by
      the exact reverse sweep of the same steps (`astroformer._head._read.solve_read`, a custom VJP); passing a
      `stepsize_controller`, an `adjoint` (e.g. `RecursiveCheckpointAdjoint(...)`) or another solver solves in read time with diffrax's own
      adjoint (default `RecursiveCheckpointAdjoint(checkpoints=read_steps)` on a fixed grid). Full default:
      `Kvaerno5()` with a `PIDController` (rtol 1e-6, atol 1e-9), float64 only: in float32 it runs out of steps
      on the stiff calcium, so `state="full"` in float32 needs an explicit `solver` (e.g. `Tsit5()`).
    - `read_steps`: steps of the reduced read's fixed grid (default 8). The error is second order,
      $\propto$ `read_steps`$^{-2}$, and vanishes as the read settles: at `NeuronAstrocyteAttention`'s default
      parameters 8 steps are within $10^{-9}$ (relative) of a tight float64 solve, far below float32 rounding;
      reads that end far from equilibrium (e.g. $\tau_n = \tau_s = 0.1\,T_r$) need more (about 1% error at
      8 steps, 0.1% at 16). Measured by `benchmarks/attention_speed.py`.
    - `max_steps`: per-solve step budget of adaptive solvers; running out raises an error.
    - `chunk_size`: chunk length of the causal forms: the default ODE head runs write, read and readout one chunk
      at a time (so its memory is the equilibrium's, not O(L M) per intermediate); the equilibrium and other
      reads chunk their linear-time readout.
    - `throw`: raise on solver failure (diffrax's `throw`).

    **Returns:** the outputs $x$ at the end of each read (or $x^*$), shape (L, N).

    References: Kozachkov, Kastanenka & Krotov, PNAS 120:e2219150120 (2023); Kozachkov, Slotine & Krotov,
    arXiv:2311.08135, App. C.
    """
    check_choice("mode", mode, ("ode", "equilibrium"))
    check_choice("state", state, ("reduced", "full"))
    check_bool("causal", causal)
    check_bool("throw", throw)
    for name, value, kind in (
        ("solver", solver, diffrax.AbstractSolver),
        ("stepsize_controller", stepsize_controller, diffrax.AbstractStepSizeController),
        ("adjoint", adjoint, diffrax.AbstractAdjoint),
    ):
        if value is not None and not isinstance(value, kind):
            raise TypeError(f"{name}: expected None or a diffrax.{kind.__name__}, got {value!r}")
    read_steps = check_int("read_steps", read_steps)
    chunk_size = check_int("chunk_size", chunk_size)
    max_steps = check_int("max_steps", max_steps)
    if not isinstance(params, NAParams):
        raise TypeError(f"params: expected an astroformer.NAParams, got {type(params).__name__}")
    phi_q, phi_k, v, present = check_head_inputs(phi_q, phi_k, v, mask)
    phi_q = params.guard(phi_q, phi_q.dtype)  # every mode reads phi_q, so the check is never dropped

    if mode == "equilibrium":
        log_decay = jnp.where(present, params.log_write_decay(), 0.0).astype(phi_q.dtype)
        out = normalised_linear_attention(phi_q, phi_k, v, log_decay, present, causal=causal, chunk_size=chunk_size)
        return check_output("na_attention", out, phi_q.dtype)
    opts = dict(
        solver=solver,
        stepsize_controller=stepsize_controller,
        adjoint=adjoint,
        read_steps=read_steps,
        max_steps=max_steps,
        throw=throw,
    )
    if state == "full":
        return check_output(
            "na_attention", _ode_full(phi_q, phi_k, v, params, present, causal=causal, **opts), phi_q.dtype
        )
    if causal and _default_read(solver, stepsize_controller, adjoint):
        out = _causal_ode_chunks(
            phi_q, phi_k, v, params, present, read_steps=read_steps, chunk_size=chunk_size, throw=throw
        )
        return check_output("na_attention", out, phi_q.dtype)
    memory = write_reduced(phi_k, v, params, present)
    z = reduced_read(phi_q, memory, params, v.shape[-1], causal=causal, **opts)
    out = linear_attention_state(z, memory.keys, memory.values, memory.log_decay, causal=causal, chunk_size=chunk_size)
    return check_output("na_attention", out, phi_q.dtype)


def _default_read(solver, stepsize_controller, adjoint) -> bool:
    """Whether the reduced read takes its default: `Magnus2` on the fixed grid with the custom VJP."""
    return (solver is None or type(solver) is Magnus2) and stepsize_controller is None and adjoint is None


def _read_field(phi_q, g, params: NAParams, N: int) -> ReducedReadField:
    r"""The reduced read's field of queries `phi_q` starting from astrocyte weights `g` (both (L, M)): calcium
    $p(0) = \phi(q) \odot g$ relaxing to its mean $\bar p$ at the rate $\kappa = N M T_r / \tau_p$."""
    M = phi_q.shape[-1]
    p_bar = calcium_mean(phi_q, g)[..., None]
    source = RelaxingCalcium(p0=calcium_initial(phi_q, g), p_bar=p_bar, kappa=N * M * params.t_read / params.tau_p)
    return ReducedReadField(phi_q=phi_q, source=source, params=params)


def _causal_ode_chunks(phi_q, phi_k, v, params: NAParams, present, *, read_steps: int, chunk_size: int, throw: bool):
    r"""The default causal reduced head (write, astrocyte weights, read, readout) one chunk of `chunk_size`
    tokens at a time, equal to the whole-sequence form (`write_reduced`, `reduced_read`,
    `linear_attention_state`; tests) but with no (L, M) intermediate other than the read's end $z$.

    One `lax.scan` over the chunks carries what the stream keeps from one chunk to the next: the feature and
    output neurons' states at the start of the next window ($h$, $x$), the astrocyte weights $g$ and the
    readout's trace state $S$ (M, N). Each chunk writes its tokens (`write_reduced_from`), forms its $g_t$
    (`ReducedMemory.astrocyte_weights`), reads its queries (`solve_read`, custom VJP) and reads them out
    (`causal_chunk`). The step is rematerialised in the backward pass except for the read's end $z$ (saved by
    name, (L, M) in all), so the gradient stores the carries and $z$, and the read's trajectory is recomputed once
    (by its own backward), as in the whole-sequence form."""
    L, M = phi_q.shape
    N = v.shape[-1]
    # One dtype for the whole stream (the scan's carries must keep theirs): the inputs' and the parameters'
    # promoted together, as the whole-sequence form computes in.
    dtype = jnp.result_type(phi_q, phi_k, v, *jax.tree.leaves(params))
    phi_q, phi_k, v = (a.astype(dtype) for a in (phi_q, phi_k, v))
    C = min(chunk_size, L)
    n_chunks = -(-L // C)
    pad = n_chunks * C - L
    if pad:  # absent tokens at the end: they write nothing, and their outputs are cut off
        phi_q, phi_k, v = (jnp.pad(a, ((0, pad), (0, 0))) for a in (phi_q, phi_k, v))
        present = jnp.pad(present, (0, pad))
    grid = read_grid(params, N, M, read_steps, phi_q.dtype)

    def step(carry, inputs):
        h0, x0, g0, state = carry
        q_i, k_i, v_i, live_i = inputs
        memory, (h1, x1) = write_reduced_from(k_i, v_i, params, live_i, h0, x0)
        g = memory.astrocyte_weights(g0)
        z = solve_read(_read_field(q_i, g, params, N), grid, throw=throw)[1]
        z = checkpoint_name(z, "read_end")
        state, out = causal_chunk(state, z, memory.keys, memory.values, memory.log_decay)
        return (h1, x1, g[-1], state), out

    carry = (jnp.zeros(M, dtype), jnp.zeros(N, dtype), jnp.zeros(M, dtype), jnp.zeros((M, N), dtype))
    if n_chunks == 1:  # one chunk: no loop and nothing to rematerialise (compiles faster)
        return step(carry, (phi_q, phi_k, v, present))[1][:L]
    step = jax.checkpoint(step, prevent_cse=False, policy=jax.checkpoint_policies.save_only_these_names("read_end"))
    xs = (
        phi_q.reshape(n_chunks, C, M),
        phi_k.reshape(n_chunks, C, M),
        v.reshape(n_chunks, C, N),
        present.reshape(n_chunks, C),
    )
    _, out = jax.lax.scan(step, carry, xs)
    return out.reshape(n_chunks * C, N)[:L]


def _default_tolerances(dtype):
    return (1e-6, 1e-9) if dtype == jnp.float64 else (1e-4, 1e-6)


def reduced_read(
    phi_q,
    memory: ReducedMemory,
    params: NAParams,
    N: int,
    *,
    causal: bool,
    solver,
    stepsize_controller,
    adjoint,
    read_steps,
    max_steps,
    throw,
    saveat=None,
):
    r"""Solve every query's reduced read at once; returns $z(T_r)$, shape (L, M) (or the diffrax solution
    when `saveat` is given)."""
    L, M = phi_q.shape
    field = _read_field(phi_q, memory.read_weights(causal), params, N)
    grid = read_grid(params, N, M, read_steps, phi_q.dtype)
    if _default_read(solver, stepsize_controller, adjoint) and saveat is None:
        return solve_read(field, grid, throw=throw)[1]  # the default: one fixed-grid solve, custom VJP
    solver = Magnus2() if solver is None else solver
    dt0 = None
    if stepsize_controller is None:
        if isinstance(solver, Magnus2) or not isinstance(solver, diffrax.AbstractAdaptiveSolver):
            stepsize_controller = diffrax.StepTo(ts=grid)
        else:
            rtol, atol = _default_tolerances(phi_q.dtype)
            stepsize_controller = diffrax.PIDController(rtol=rtol, atol=atol)
            dt0 = grid[1]
    if isinstance(stepsize_controller, diffrax.StepTo):
        max_steps = len(stepsize_controller.ts) - 1
        adjoint = diffrax.RecursiveCheckpointAdjoint(checkpoints=max_steps) if adjoint is None else adjoint
    adjoint = diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint
    y0 = (jnp.zeros_like(phi_q), jnp.zeros_like(phi_q))
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        solver,
        jnp.asarray(0.0, phi_q.dtype),  # times in the state's dtype: diffrax promotes the state to theirs
        jnp.asarray(1.0, phi_q.dtype),
        dt0,
        y0,
        stepsize_controller=stepsize_controller,
        adjoint=adjoint,
        saveat=diffrax.SaveAt(t1=True) if saveat is None else saveat,
        max_steps=max_steps,
        throw=throw,
    )
    return sol.ys[1][-1] if saveat is None else sol


def _full_options(dtype, solver, stepsize_controller, adjoint):
    if dtype != jnp.float64 and solver is None:
        # Measured: in float32 the default implicit solve of the literal model's stiff calcium (N*M/tau_p) runs
        # out of steps at NAParams' defaults and at milder ones, whatever max_steps; it succeeds in float64.
        raise ValueError(
            f"state: 'full' (the literal model, for validation) solves its stiff calcium with an implicit solver "
            f"that needs float64, got {jnp.dtype(dtype).name} inputs; enable float64 "
            "(jax.config.update('jax_enable_x64', True)) and pass float64 arrays, use state='reduced' (equal to "
            "the full model, see the tests), or pass your own solver (e.g. diffrax.Tsit5(), with a stepsize_controller "
            "where the function takes one)"
        )
    solver = diffrax.Kvaerno5() if solver is None else solver
    if stepsize_controller is None:
        rtol, atol = _default_tolerances(dtype)
        stepsize_controller = diffrax.PIDController(rtol=rtol, atol=atol)
    adjoint = diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint
    dt0 = None if isinstance(stepsize_controller, diffrax.PIDController) else 1e-3
    return solver, stepsize_controller, adjoint, dt0


def full_memory(phi_k, v, params, present, *, solver, stepsize_controller, adjoint, max_steps, throw):
    """The literal write phase: c (L, N, M) and g (L, M) after each token."""
    solver, stepsize_controller, adjoint, dt0 = _full_options(phi_k.dtype, solver, stepsize_controller, adjoint)
    c, g, _ = write_full(
        phi_k,
        v,
        params,
        present,
        solver=solver,
        stepsize_controller=stepsize_controller,
        adjoint=adjoint,
        max_steps=max_steps,
        dt0=dt0,
        throw=throw,
    )
    return c, g


def full_read(phi_q_t, c_t, g_t, params, *, solver, stepsize_controller, adjoint, max_steps, throw, saveat=None):
    """The literal read of one query from rest: returns the diffrax solution over state (h, x, s, p)."""
    N, M = c_t.shape
    dtype = c_t.dtype
    solver, stepsize_controller, adjoint, dt0 = _full_options(dtype, solver, stepsize_controller, adjoint)
    p0 = jnp.broadcast_to(calcium_initial(phi_q_t, g_t), (N, M))
    y0 = (jnp.zeros(M, dtype), jnp.zeros(N, dtype), jnp.zeros((N, M), dtype), p0)
    return diffrax.diffeqsolve(
        diffrax.ODETerm(FullReadField(params)),
        solver,
        jnp.asarray(0.0, dtype),  # times in the state's dtype: diffrax promotes the state to theirs
        jnp.asarray(1.0, dtype),
        dt0,
        y0,
        args=(phi_q_t, c_t),
        stepsize_controller=stepsize_controller,
        adjoint=adjoint,
        saveat=diffrax.SaveAt(t1=True) if saveat is None else saveat,
        max_steps=max_steps,
        throw=throw,
    )


def _ode_full(
    phi_q, phi_k, v, params, present, *, causal, solver, stepsize_controller, adjoint, read_steps, max_steps, throw
):
    del read_steps
    opts = dict(
        solver=solver, stepsize_controller=stepsize_controller, adjoint=adjoint, max_steps=max_steps, throw=throw
    )
    c, g = full_memory(phi_k, v, params, present, **opts)
    if not causal:
        c = jnp.broadcast_to(c[-1], c.shape)
        g = jnp.broadcast_to(g[-1], g.shape)
    read = jax.vmap(lambda q, ct, gt: full_read(q, ct, gt, params, **opts).ys[1][-1])
    return read(phi_q, c, g)
