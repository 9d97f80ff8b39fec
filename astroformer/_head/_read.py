r"""The read phase: a query is read out through the tripartite synapses while the astrocyte divides.

From rest ($h = x = s = 0$), with c and g frozen (model.md §3):

    tau_n dh/dt = -h + phi(q)
    tau_n dx/dt = -x + sum_j s_ij h_j
    tau_s ds_ij/dt = -p_ij s_ij + c_ij
    tau_p dp_ij/dt = sum_kl (p_kl - p_ij),      p_ij(0) = phi_j(q) g_j

Every solve runs in read time $u = t / T_r \in [0, 1]$ so that $T_r$ is an ordinary (differentiable) parameter.

Two implementations, proven equal in the tests:

- `FullReadField`: the literal N×M state (h, x, s, p).
- `ReducedReadField`: the exact reduction. With all-to-all diffusion $p_{ij}(t) = p_j(t)$ in closed form,
  $s_{ij} = c_{ij}\sigma_j$ and $x = c\,z$ with

      tau_s dsigma_j/dt = 1 - p_j(t) sigma_j,          sigma(0) = 0
      tau_n dz_j/dt     = -z_j + h_j(t) sigma_j,        z(0) = 0,    h_j(t) = phi_j(q)(1 - e^{-t/tau_n})

  an O(M) linear system per query. `Magnus2` integrates it exactly whenever its coefficients are constant,
  which makes it unconditionally stable however stiff $p/\tau_s$ and $NM/\tau_p$ are.
"""

import abc
import functools

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jax.custom_derivatives import CustomVJPPrimal, SymbolicZero
from jaxtyping import Array, ArrayLike, Float

from .._solvers._magnus import Magnus2, magnus_update
from .._solvers._special import magnus_exponentials_and_slopes
from ._equations import (
    calcium_rhs,
    calcium_window_mean,
    efficacy_rhs,
    feature_neurons_rhs,
    feature_rise,
    feature_rise_mean,
    output_neurons_rhs,
    relaxing_calcium,
)
from ._params import NAParams


class FullReadField(eqx.Module):
    """Literal read vector field in read time, state (h (M,), x (N,), s (N, M), p (N, M)); args (phi_q, c)."""

    params: NAParams

    def __call__(self, u, y, args):
        h, x, s, p = y
        phi_q, c = args
        prm = self.params
        dh = feature_neurons_rhs(h, phi_q, prm.tau_n)
        dx = output_neurons_rhs(x, s @ h, prm.tau_n)
        ds = efficacy_rhs(s, p, c, prm.tau_s)
        dp = calcium_rhs(p, prm.tau_p)
        return tuple(prm.t_read * d for d in (dh, dx, ds, dp))


class AbstractRateSource(eqx.Module):
    r"""Where a reduced read takes the synaptic decay rate $p_j(u)$ of $\tau_s\dot\sigma_j = 1 - p_j\sigma_j$
    from, in read time $u = t/T_r$: the abstract astrocyte's relaxing calcium (`RelaxingCalcium`) or the rates
    of a biophysical calcium solve (`NodeRates`, `astroformer._head._calcium_read`)."""

    @abc.abstractmethod
    def rate(self, u: Float[ArrayLike, ""]) -> Float[Array, "*b M"]:
        """The rate at read time `u`."""

    @abc.abstractmethod
    def window_mean(self, u0: Float[ArrayLike, ""], u1: Float[ArrayLike, ""]) -> Float[Array, "*b M"]:
        """The rate averaged over the step $[u_0, u_1]$ (exactly, or by the source's quadrature)."""


class RelaxingCalcium(AbstractRateSource):
    r"""The abstract astrocyte: $p_j(u) = \bar p + (p_j(0) - \bar p)\,e^{-\kappa u}$ (`relaxing_calcium`).

    **Fields:** `p0` the initial calcium $\phi_j(q) g_j$ (..., M); `p_bar` its mean (..., 1); `kappa`
    $\kappa = NM\,T_r/\tau_p$, per unit of read time."""

    p0: Float[Array, "*b M"]
    p_bar: Float[Array, "*b 1"]
    kappa: Float[ArrayLike, ""]

    def rate(self, u):
        return relaxing_calcium(self.p0, self.p_bar, self.kappa, u)

    def window_mean(self, u0, u1):
        return calcium_window_mean(self.p0, self.p_bar, self.kappa, u0, u1 - u0)


class ReducedReadField(eqx.Module):
    r"""Reduced read vector field for a batch of queries, state $(\sigma, z)$, each (..., M), in read time
    $u = t/T_r$:

        tau_s dsigma_j/dt = 1 - p_j(t) sigma_j,      tau_n dz_j/dt = -z_j + h_j(t) sigma_j,

    with $h_j(t) = \phi_j(q)(1 - e^{-t/\tau_n})$ (`feature_rise`) and the rate $p_j$ from `source`.

    **Fields:** `phi_q` $\phi(q)$ (..., M); `source` an `AbstractRateSource` (`RelaxingCalcium` for the
    abstract astrocyte); and the `params`.
    """

    phi_q: Float[Array, "*b M"]
    source: AbstractRateSource
    params: NAParams

    def __call__(self, u, y, args):
        sigma, z = y
        prm = self.params
        dsigma = (1.0 - self.source.rate(u) * sigma) / prm.tau_s
        dz = (feature_rise(self.phi_q, u * prm.t_read, prm.tau_n) * sigma - z) / prm.tau_n
        return prm.t_read * dsigma, prm.t_read * dz

    def linear_coefficients(self, u0, u1):
        r"""Step-averaged coefficients of $\dot\sigma = f - a\sigma$, $\dot z = b\sigma - d z$ over $[u_0, u_1]$
        (read time), each exact for the abstract astrocyte: returns `(a, b, d, f)`."""
        prm = self.params
        T = prm.t_read
        p_avg = self.source.window_mean(u0, u1)
        h_avg = feature_rise_mean(self.phi_q, u0 * T, (u1 - u0) * T, prm.tau_n)
        return T * p_avg / prm.tau_s, T * h_avg / prm.tau_n, T / prm.tau_n, T / prm.tau_s


class StepTimeField(eqx.Module):
    r"""A read field (with `linear_coefficients`) in *step time* $s \in [0, S]$: step $k$ of the solve covers
    $[\text{grid}_k, \text{grid}_{k+1}]$ of read time, $u(s) = \text{grid}_k + (s - k)\,\Delta u_k$, so
    $dy/ds = \Delta u_k\,dy/du$ (the same equations, reparameterised in time).

    The solver's step times are then the concrete integers $0, \dots, S$ whatever the parameters, so the
    solve's loop is not batched when the read is `vmap`ped over heads with their own parameters (a batched
    loop condition makes XLA select every state array at every step).
    """

    field: ReducedReadField
    grid: Float[Array, " G"]

    def _locate(self, s):
        S = self.grid.shape[0] - 1
        k = jnp.clip(jnp.floor(s), 0, S - 1).astype(jnp.int32)
        u0 = self.grid[k]
        return k, u0, self.grid[k + 1] - u0

    def __call__(self, s, y, args):
        k, u0, du = self._locate(s)
        return jax.tree.map(lambda d: du * d, self.field(u0 + (s - k) * du, y, args))

    def linear_coefficients(self, s0, s1):
        k, u0, du = self._locate(s0)
        coefficients = self.field.linear_coefficients(u0 + (s0 - k) * du, u0 + (s1 - k) * du)
        return tuple(du * c for c in coefficients)


def read_grid(params: NAParams, N: int, M: int, steps: int, dtype) -> Float[Array, " G"]:
    r"""Geometric step grid in read time: the first step resolves the fastest transient
    $\min(\tau_n, \tau_p/NM)$, later steps grow geometrically up to $T_r$ (where Magnus2 is exact)."""
    fastest = jnp.minimum(params.tau_n, params.tau_p / (N * M)) / (4 * params.t_read)
    u1 = jnp.minimum(fastest, 1.0 / steps).astype(dtype)
    k = jnp.arange(steps, dtype=dtype) / max(steps - 1, 1)
    grid = u1 ** (1.0 - k)  # u1 ... 1, geometric
    # Pin the end to exactly 1 (diffrax's StepTo requires ts[-1] == t1): under jit with traced parameters,
    # XLA may round k[-1] or the power so that the last point lands an ulp away from 1.
    grid = grid.at[-1].set(1.0)
    return jnp.concatenate([jnp.zeros(1, dtype), grid])


def _step_time_solve(term_field: StepTimeField, saveat: diffrax.SaveAt, throw: bool):
    S = term_field.grid.shape[0] - 1
    zeros = jnp.zeros_like(term_field.field.phi_q)
    # The step times in the grid's dtype: diffrax promotes the state to its times' dtype, and Python or NumPy
    # times are float64 under x64, which would turn a float32 model's read (and its cotangents) into float64.
    ts = jnp.arange(S + 1, dtype=term_field.grid.dtype)
    return diffrax.diffeqsolve(
        diffrax.ODETerm(term_field),
        Magnus2(),
        ts[0],
        ts[-1],
        None,
        (zeros, zeros),
        saveat=saveat,
        stepsize_controller=diffrax.StepTo(ts=ts),
        max_steps=S,
        throw=throw,
    )


def _step(field: ReducedReadField, grid, k, y):
    """Step k of the step-time solve: the same `Magnus2` update diffrax applies."""
    s0 = k.astype(grid.dtype)
    return magnus_update(StepTimeField(field, grid).linear_coefficients(s0, s0 + 1), 1.0, y)


QUERY_CHUNK = 64
"""Queries per chunk of the read's backward sweep (its temporary memory is O(QUERY_CHUNK·M·S), not O(L·M·S))."""


def _query_spec(field):
    """For the abstract astrocyte's field over L queries (`phi_q` (L, M), `RelaxingCalcium` with `p0` (L, M) and
    `p_bar` (L, 1)): the filter spec of its per-query leaves (leading axis L), the rest (time constants, the
    relaxation rate) being shared. None where the read is not chunked: a single query (M,), or another rate
    source, whose arrays are not laid out query-first (`NodeRates` holds a time axis)."""
    if field.phi_q.ndim != 2 or not isinstance(field.source, RelaxingCalcium):
        return None
    spec = jax.tree.map(lambda _: False, field)
    return eqx.tree_at(
        lambda f: (f.phi_q, f.source.p0, f.source.p_bar),
        spec,
        (True, True, True),
    )


def _solve_chunk(field, grid, throw):
    sol = _step_time_solve(StepTimeField(field, grid), diffrax.SaveAt(t1=True), throw)
    return tuple(y[-1] for y in sol.ys)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _solve_end(field, grid, throw):
    spec = _query_spec(field)
    L = field.phi_q.shape[0]
    if spec is None or L <= QUERY_CHUNK:
        return _solve_chunk(field, grid, throw)
    # One diffrax solve per chunk of queries (independent reads): the solve's temporaries are a chunk's.
    rows, shared = eqx.partition(field, spec)
    solved = jax.lax.map(lambda row: _solve_chunk(eqx.combine(row, shared), grid, throw), rows, batch_size=QUERY_CHUNK)
    # The barrier keeps XLA from folding the chunks' layout into the consumer's (the causal readout chunks the
    # queries the same way): without it XLA's CPU compiler rejected the forward of a vmapped layer with
    # L > QUERY_CHUNK (an HLO verifier error on the readout's dot; jaxlib 0.10.2).
    return jax.lax.optimization_barrier(solved)


class _Differentiated(eqx.Module):
    """Kept with the read's residuals: whether its shared inputs (time constants, relaxation rate, step grid) are
    differentiated, which decides how the abstract astrocyte's reverse sweep runs (`_relaxing_sweep`)."""

    shared: bool = eqx.field(static=True)


def _is_primal(x):
    return isinstance(x, CustomVJPPrimal)


def _solve_end_fwd(field, grid, throw):
    # With symbolic zeros, every leaf comes as a CustomVJPPrimal(value, perturbed).
    shared = (field.params, getattr(field.source, "kappa", None), grid)
    perturbed = any(p.perturbed for p in jax.tree.leaves(shared, is_leaf=_is_primal))
    field, grid = jax.tree.map(lambda p: p.value, (field, grid), is_leaf=_is_primal)
    # Nothing of the trajectory is kept: the backward recomputes it, a chunk of queries at a time.
    return _solve_end(field, grid, throw), (field, grid, _Differentiated(perturbed))


def _reverse_sweep(step, shared, xs, y0, cotangent):
    """The exact reverse sweep of the steps $y_{k+1} = $ `step(y_k, shared, x_k)` from `y0`: recompute the states
    before each step in one `lax.scan`, then pull `cotangent` (the end state's) back through each step's `jax.vjp`
    in one reverse `lax.scan`. Returns the cotangent of `shared` (summed over the steps) and, stacked over the
    steps, those of the `xs` (float0 for integer ones)."""

    def forward(y, x):
        return step(y, shared, x), y

    _, before = jax.lax.scan(forward, y0, xs)  # the state before each step

    def back(carry, inputs):
        ct_y, ct_shared = carry
        y, x = inputs
        _, vjp = jax.vjp(step, y, shared, x)
        ct_prev, d_shared, d_x = vjp(ct_y)
        return (ct_prev, jax.tree.map(jnp.add, ct_shared, d_shared)), d_x

    init = (tuple(cotangent), jax.tree.map(jnp.zeros_like, shared))
    (_, ct_shared), ct_xs = jax.lax.scan(back, init, (before, xs), reverse=True)
    return ct_shared, ct_xs


def _sweep(field, grid, cotangent):
    """The reverse sweep (`_reverse_sweep`) of the read of `field` from rest, step by step (`_step`): the
    cotangents of the field and the grid."""
    zeros = jnp.zeros_like(field.phi_q)
    steps = jnp.arange(grid.shape[0] - 1)
    (ct_field, ct_grid), _ = _reverse_sweep(
        lambda y, fg, k: _step(*fg, k, y), (field, grid), steps, (zeros, zeros), cotangent
    )
    return ct_field, ct_grid


def _step_scalars(field: ReducedReadField, grid: Float[Array, " G"]) -> tuple[Float[Array, " S"], ...]:
    r"""The per-step scalars of the abstract astrocyte's read in step time (step $k$ covers
    $[u_0, u_0 + \Delta u]$ of read time, $\Delta u = \text{grid}_{k+1} - \text{grid}_k$): returns
    $(c, \beta, \rho, \eta)$, each (S,), with

        c    = Delta u T_r / tau_s                                   (f dt, and a dt = c p_avg)
        beta = Delta u T_r / tau_n                                   (d dt)
        rho  = e^{-kappa u_0} psi(kappa Delta u)                     (p_avg = p_bar + (p_0 - p_bar) rho)
        eta  = 1 - e^{-u_0 T_r / tau_n} psi(Delta u T_r / tau_n)     (h_avg = phi(q) eta)

    i.e. `calcium_window_mean` and `feature_rise_mean` at unit inputs: the coefficients of
    `StepTimeField.linear_coefficients` with the per-element factors taken out."""
    prm = field.params
    source = field.source
    assert isinstance(source, RelaxingCalcium)  # the abstract astrocyte's read only
    T = prm.t_read
    u0 = grid[:-1]
    du = grid[1:] - u0
    one, zero = jnp.ones((1,), grid.dtype), jnp.zeros((1,), grid.dtype)  # a unit "feature" (M = 1)
    rho = jax.vmap(lambda a, d: calcium_window_mean(one, zero, source.kappa, a, d))(u0, du)[:, 0]
    eta = jax.vmap(lambda a, d: feature_rise_mean(one, a, d, prm.tau_n))(u0 * T, du * T)[:, 0]
    return du * (T / prm.tau_s), du * (T / prm.tau_n), rho, eta


def _element_step(y, per_query, scalars):
    r"""One `Magnus2` step (`magnus_update`) of the abstract astrocyte's read, per element, from its per-query
    leaves `per_query` $= (\phi(q), p_0, \bar p)$ and the step's scalars $(c, \beta, \rho, \eta)$
    (`_step_scalars`): the coefficients times the step are
    $(a, b, d, f)\,\Delta s = (c\,(\bar p + (p_0 - \bar p)\rho),\ \beta\eta\,\phi(q),\ \beta,\ c)$."""
    phi_q, p0, p_bar = per_query
    c, beta, rho, eta = scalars
    return magnus_update((c * (p_bar + (p0 - p_bar) * rho), (beta * eta) * phi_q, beta, c), 1.0, y)


def _element_step_adjoint(sigma0, per_query, scalars, ct_sigma1, ct_z1):
    r"""The adjoint of one `_element_step`, written out: from the state $\sigma_0$ before the step and the
    cotangents $(\bar\sigma_1, \bar z_1)$ after it, with $\alpha = c\,(\bar p + (p_0 - \bar p)\rho)$ and
    $b = \beta\eta\,\phi(q)$ (the step is $\sigma_1 = e^{-\alpha}\sigma_0 + c\,\psi(\alpha)$,
    $z_1 = e^{-\beta} z_0 + b\,w$, $w = \sigma_0 E_1(\alpha, \beta) + c\,E_2(\alpha, \beta)$):

        ct_sigma0 = e^{-alpha} ct_sigma1 + b E_1 ct_z1
        ct_alpha  = ct_sigma1 (-e^{-alpha} sigma0 + c psi'(alpha)) + ct_z1 b (sigma0 dE_1/dalpha + c dE_2/dalpha)

    Returns `(ct_sigma0, ct_alpha, w)`, each like $\sigma_0$; $z_0$'s cotangent is $e^{-\beta}\bar z_1$ and
    $b$'s is $w\,\bar z_1$ (`_relaxing_sweep`). Also returns the per-element terms of the step scalars'
    cotangents that need the step's own values (`_element_sweep` sums them; unused, they are not computed):
    $(\bar\sigma_1\psi(\alpha) + \bar z_1 b E_2,\ \bar z_1 b\,(\sigma_0\,\partial_\beta E_1 + c\,\partial_\beta E_2))$,
    of $c$ and $\beta$."""
    phi_q, p0, p_bar = per_query
    c, beta, rho, eta = scalars
    alpha = c * (p_bar + (p0 - p_bar) * rho)
    b_ct_z1 = (beta * eta) * phi_q * ct_z1
    (e_a, psi_a, e1, e2), (de_a, dpsi_a, de1, de2), (de1_b, de2_b) = magnus_exponentials_and_slopes(alpha, beta)
    ct_alpha = ct_sigma1 * (de_a * sigma0 + c * dpsi_a) + b_ct_z1 * (sigma0 * de1 + c * de2)
    scalar_terms = (ct_sigma1 * psi_a + b_ct_z1 * e2, b_ct_z1 * (sigma0 * de1_b + c * de2_b))
    return (e_a * ct_sigma1 + e1 * b_ct_z1, ct_alpha, sigma0 * e1 + c * e2), scalar_terms


def _relaxing_sweep(field, grid, cotangent, *, shared: bool = True):
    r"""`_sweep` for the abstract astrocyte (`RelaxingCalcium`): its step's coefficients factor into per-element
    leaves $(\phi(q), p_0, \bar p)$ and per-step scalars $(c, \beta, \rho, \eta)$ (`_step_scalars`,
    `_element_step`), so no module, grid lookup or coefficient function is differentiated inside the reverse scan.
    The calcium mean $\bar p$ (one per query) enters the steps broadcast over the features and its cotangent is
    summed back to its own shape once, after the sweep (in the loop, that sum cost the train step about 5 %).

    `shared`: whether the time constants, the relaxation rate and the grid are differentiated. Either way the
    per-element adjoint is written out (`_element_sweep`, `_element_step_adjoint`). $z$ enters each step only as
    $e^{-\beta_k} z$, so its cotangent after step $k$ is $\bar z_{end}$ times the later steps' decays, a per-step
    scalar, and only $\bar\sigma$ is carried back; $p_0$ and $\bar p$ enter only through $\alpha_k$ (weights
    $c_k\rho_k$ and $c_k(1 - \rho_k)$) and $\phi(q)$ only through $b_k$ (weight $\beta_k\eta_k$), so the scan
    stacks $\bar\alpha_k$ and $w_k$ and their weighted sums over the steps are taken once, after it. `jax.vjp` of
    the step compiled to 18 elementwise kernels over the (query, feature) arrays, each a pass over memory, without
    the scalars' cotangents (about 50 with them); this, to about 8 (about 20 with them; docs/performance.md).

    - True (fitting time constants): the sweep also returns the per-step scalars' cotangents (sums over the
      elements), pulled back to the time constants and the grid through a vjp of `_step_scalars`. (It took
      `jax.vjp` of the elementwise step before: the layer's all-parameter gradient took 16–18 % longer at
      L = 256.)
    - False (training, whose time constants are frozen): the shared cotangents are zero, and no sum over the
      elements is taken inside the loop.

    Both equal `_sweep` up to rounding (tests). (Unrolling the S steps in Python instead of the two `lax.scan`s
    compiled three times slower and ran slower.)"""
    phi_q, p0 = field.phi_q, field.source.p0
    p_bar, unbroadcast = jax.vjp(lambda m: jnp.broadcast_to(m, p0.shape), field.source.p_bar)
    per_query = (phi_q, p0, p_bar)
    if shared:
        scalars, scalars_vjp = jax.vjp(_step_scalars, field, grid)
        ct_query, ct_scalars = _element_sweep(per_query, scalars, cotangent, unbroadcast, shared=True)
        ct_field, ct_grid = scalars_vjp(ct_scalars)
    else:
        ct_query, _ = _element_sweep(per_query, _step_scalars(field, grid), cotangent, unbroadcast, shared=False)
        ct_field, ct_grid = jax.tree.map(jnp.zeros_like, (field, grid))
    return eqx.tree_at(
        lambda f: (f.phi_q, f.source.p0, f.source.p_bar),
        ct_field,
        jax.tree.map(jnp.add, (ct_field.phi_q, ct_field.source.p0, ct_field.source.p_bar), ct_query),
    ), ct_grid


def _element_sweep(per_query, scalars, cotangent, unbroadcast, *, shared: bool):
    r"""The per-element cotangents $(\phi(q), p_0, \bar p)$ of the read from rest by the written-out adjoint
    (`_relaxing_sweep`); `unbroadcast` sums $\bar p$'s back to its own shape. With `shared`, also the cotangents
    of the per-step scalars $(c, \beta, \rho, \eta)$, each (S,): with $P = \bar p + (p_0 - \bar p)\rho$,
    $\alpha = cP$, $b = \beta\eta\phi(q)$, $w = \sigma_0 E_1 + c E_2$ and $\bar z_1 = \bar z_{end}\,\ell_k$
    ($\ell_k$ the later steps' decays), summed over the elements,

        ct_c    = sum(ct_alpha P + ct_sigma1 psi(alpha) + ct_z1 b E_2)
        ct_beta = sum(ct_z1 (eta phi w + b (sigma0 dE_1/dbeta + c dE_2/dbeta) - e^{-beta} z0))
        ct_rho  = c sum(ct_alpha (p0 - p_bar)),        ct_eta = beta sum(ct_z1 phi w)

    The sums of the stacked $\bar\alpha_k$ and $w_k$ are taken after the reverse loop, the two that need the
    step's own values inside it, and $\bar z_{end} \cdot z_k$ from $z$'s recurrence on those sums (S scalars)."""
    phi_q, p0, p_bar = per_query
    c, beta, rho, eta = scalars
    zeros = jnp.zeros_like(phi_q)
    ct_sigma_end, ct_z_end = cotangent

    _, before = jax.lax.scan(lambda y, x: (_element_step(y, per_query, x), y[0]), (zeros, zeros), scalars)
    decay = jnp.exp(-beta)
    later = jnp.concatenate([jnp.cumprod(decay[::-1])[::-1][1:], jnp.ones_like(decay[:1])])  # prod_{j > k} e^{-beta_j}

    def back(ct_sigma, inputs):
        sigma0, x, later_k = inputs
        (ct_sigma0, ct_alpha, w), scalar_terms = _element_step_adjoint(
            sigma0, per_query, x, ct_sigma, ct_z_end * later_k
        )
        return ct_sigma0, (ct_alpha, w, tuple(jnp.sum(t) for t in scalar_terms) if shared else None)

    _, (ct_alpha, w, sums) = jax.lax.scan(back, ct_sigma_end, (before, scalars, later), reverse=True)
    ct_query = (
        ct_z_end * jnp.tensordot(beta * eta * later, w, axes=1),
        jnp.tensordot(c * rho, ct_alpha, axes=1),
        *unbroadcast(jnp.tensordot(c * (1 - rho), ct_alpha, axes=1)),
    )
    if not shared:
        return ct_query, None
    elements = tuple(range(1, ct_alpha.ndim))
    alpha_p_bar = jnp.sum(ct_alpha * p_bar, axis=elements)  # p_bar is broadcast to the elements' shape
    alpha_dp = jnp.sum(ct_alpha * (p0 - p_bar), axis=elements)
    z_phi_w = jnp.sum(w * (ct_z_end * phi_q), axis=elements)  # sum(ct_z_end phi w_k)
    # z_dot_k = sum(ct_z_end z_k) by z's own recurrence z_{k+1} = e^{-beta_k} z_k + beta_k eta_k phi w_k, on the
    # step's scalars (summing ct_z_end z_k in the states' recomputation made it compute z as well)
    _, z_dot = jax.lax.scan(
        lambda z, x: (x[0] * z + x[1], z), jnp.zeros_like(z_phi_w[0]), (decay, beta * eta * z_phi_w)
    )
    ct_b = later * z_phi_w  # sum(ct_z1 phi w_k): the cotangent of b_k / phi
    ct_c = alpha_p_bar + rho * alpha_dp + sums[0]
    ct_beta = eta * ct_b + sums[1] - decay * later * z_dot
    return ct_query, (ct_c, ct_beta, c * alpha_dp, beta * ct_b)


def _solve_end_bwd(throw, residuals, cotangent):
    """The exact reverse sweep of the S steps (`_sweep`), over chunks of `QUERY_CHUNK` queries: the reads of
    different queries are independent, so each chunk's trajectory is recomputed and swept on its own and only
    one chunk's S states are ever held. Leaves of the field with a leading query axis are chunked; the others
    (time constants, the relaxation rate) are shared and their cotangents summed over the queries."""
    del throw
    field, grid, differentiated = residuals
    cotangent = tuple(jnp.zeros(c.shape, c.dtype) if isinstance(c, SymbolicZero) else c for c in cotangent)
    spec = _query_spec(field)
    if isinstance(field.source, RelaxingCalcium):
        sweep = functools.partial(_relaxing_sweep, shared=differentiated.shared)
    else:
        sweep = _sweep
    L = field.phi_q.shape[0] if spec is not None else 0
    if spec is None or L <= QUERY_CHUNK:  # nothing to chunk: the whole trajectory is recomputed at once
        return sweep(field, grid, cotangent)
    rows, shared = eqx.partition(field, spec)

    def one(inputs):
        row, ct = inputs
        ct_field, ct_grid = sweep(eqx.combine(row, shared), grid, ct)
        ct_row, ct_shared = eqx.partition(ct_field, spec)
        return ct_row, ct_shared, ct_grid

    ct_rows, ct_shared, ct_grid = jax.lax.map(one, (rows, tuple(cotangent)), batch_size=QUERY_CHUNK)
    ct_shared = jax.tree.map(lambda a: jnp.sum(a, axis=0), ct_shared)
    return eqx.combine(ct_rows, ct_shared), jnp.sum(ct_grid, axis=0)


_solve_end.defvjp(_solve_end_fwd, _solve_end_bwd, symbolic_zeros=True)


def solve_read(
    field: ReducedReadField, grid: Float[Array, " G"], *, throw: bool = True
) -> tuple[Float[Array, "*b M"], Float[Array, "*b M"]]:
    r"""The reduced read from rest by `Magnus2` on the fixed read-time `grid`: $(\sigma, z)$ at its end.

    One `diffrax.diffeqsolve` over `StepTimeField(field, grid)` (concrete step times $0..S$, so its loop is
    not batched under `vmap`). Its gradient is the exact reverse sweep of the same $S$ steps (what
    `RecursiveCheckpointAdjoint(checkpoints=S)` computes, including the dependence of the grid on the
    parameters): the forward keeps nothing of the trajectory; the backward recomputes it for a chunk of
    `QUERY_CHUNK` queries at a time and pulls the cotangent back through each step in one reverse `lax.scan` (the
    abstract astrocyte's step adjoint written out, `_relaxing_sweep`; another source's by `jax.vjp`), so no
    diffrax loop is differentiated and the temporary memory does not grow with S.
    """
    return _solve_end(jax.tree.map(jnp.asarray, field), jnp.asarray(grid), throw)
