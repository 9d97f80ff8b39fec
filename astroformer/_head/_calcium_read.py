r"""The read phase with a biophysical astrocyte: each process carries a calcium model (docs/calcium.md).

The paper's abstract astrocyte (model.md §3) is replaced by a calcium model from `astroformer.calcium`
(`GChI`, `LiRinzel`, or any `AbstractCalciumModel` with scalar state variables). For a query q read after
the memory c (N×M), g (M) was written, in block time t ∈ [0, T_r]:

    h_j(t) = phi_j(q) (1 - e^{-t/tau_n})                                  (feature neurons, closed form)
    u_j(t) = gain · h_j(t) g_j                                            (drive of process j)
    dy_j/dt = time_scale · [ f(y_j, u_j) + D (C̄ - C_j) e_C ]              (calcium model + diffusion)
    rate_j = rate_max · C_j^n / (C_j^n + K^n)                             (saturating, units of 1/tau_s)
    tau_s dsigma_j/dt = 1 - rate_j sigma_j,        sigma(0) = 0
    tau_n dz_j/dt     = -z_j + h_j sigma_j,        z(0) = 0
    x = c z,  s_ij = c_ij sigma_j

with C_j the process's calcium (`model.calcium(y_j)`), C̄ = mean_j C_j, e_C the unit vector of the calcium
variable and `time_scale` the model seconds per unit of block time. The abstract model is the special case
rate_j = p_j(t), the diffusive calcium in closed form.

Exactness of the one-process-per-feature reduction: in the literal network there is one process per synapse
ij. Its drive gain · h_j g_j and its initial state do not depend on the output neuron i, and all-to-all
diffusion over the N·M processes sees only their mean; so the N copies j of every process stay identical,
(C̄ over ij) = (C̄ over j), and the N×M system reduces exactly to M processes, as in the abstract read
(model.md §5). The tests check this against a literal N×M simulation.

Numerics: the calcium subsystem does not depend on sigma or z, so it is solved first (diffrax, in read time
u = t/T_r, default `Ros2` + `PIDController`), saved at the two Gauss–Legendre nodes of every step of a
fixed read grid. `Ros2` (`_solvers/_rosenbrock.py`) is a linearly implicit Rosenbrock–W method that treats every
fast self-relaxing variable of every process L-stably (a strong drive makes G-ChI's receptor binding relax at
~1e4 per unit of read time): explicit `Tsit5` diverges at fixed steps and runs out of steps adaptively on
transformers' drives. The linear, possibly very stiff synapse/output equations are then advanced on the read
grid by the exponential integrator `Magnus2` with the step-averaged rate from the Gauss nodes (local error
O(Δu³), unconditionally stable however small tau_s and tau_n are).
"""

from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float

from .._solvers._linear import linear_attention_state
from .._solvers._rosenbrock import Ros2, jacobian_diagonal
from .._validate import check_head_inputs, check_int
from ..calcium import AbstractCalciumModel, DiffusiveProcesses, GChI, LiRinzel
from ..calcium import default_stepsize_controller as _calcium_controller
from ..calcium._base import _as_float_array as _as_float  # one converter for every model parameter
from ._block import na_attention
from ._equations import feature_rise
from ._params import MAX_STEPS, READ_STEPS, NAParams
from ._read import AbstractRateSource, ReducedReadField, solve_read
from ._write import write_reduced

_COUPLING_FIELDS = ("gain", "diffusion", "rate_max", "half_saturation", "hill", "time_scale")


class CalciumCoupling(eqx.Module):
    r"""How a calcium model is wired into the read phase (docs/calcium.md). Every field is a positive,
    trainable scalar.

    **Fields:**

    - `gain`: drive per unit of presynaptic drive, $u_j = \text{gain}\cdot h_j g_j$, in the model's drive unit
      (mM of glutamate $Y_S$ for `GChI`, µM of IP3 for `LiRinzel`). An *absolute* gain: calcium must encode
      the size of $\bar p = \frac1M\sum_j\phi_j(q)g_j$, the softmax denominator, which a drive normalised by
      its own mean would divide out.
    - `diffusion`: $D$ (1/s of model time), all-to-all exchange $D(\bar C - C_j)$ of the calcium variable
      between processes; conserves $\sum_j C_j$.
    - `rate_max`: $\rho_{\max}$, maximal synaptic decay rate, in units of $1/\tau_s$.
    - `half_saturation`: $K$ (µM), calcium at half-maximal rate.
    - `hill`: $n$, Hill exponent of $\mathrm{rate}_j = \rho_{\max} C_j^n / (C_j^n + K^n)$.
    - `time_scale`: model seconds per unit of block time ($t_{\text{model}} = \text{time\_scale}\cdot t$).

    Use `default_coupling(model)` for the documented defaults of each model.
    """

    gain: Float[Array, ""] = eqx.field(converter=_as_float)
    diffusion: Float[Array, ""] = eqx.field(default=10.0, converter=_as_float)
    rate_max: Float[Array, ""] = eqx.field(default=1.0, converter=_as_float)
    half_saturation: Float[Array, ""] = eqx.field(default=1.0, converter=_as_float)
    hill: Float[Array, ""] = eqx.field(default=2.0, converter=_as_float)
    time_scale: Float[Array, ""] = eqx.field(default=10.0, converter=_as_float)

    def __check_init__(self):
        for name in _COUPLING_FIELDS:
            value = getattr(self, name)
            if isinstance(value, jax.core.Tracer):
                continue
            arr = np.asarray(value)
            if arr.shape != () or not np.isfinite(arr) or not arr > 0:
                raise ValueError(f"CalciumCoupling.{name}: expected a positive, finite scalar, got {arr!r}")

    def rate(self, calcium: Float[Array, "*b"]) -> Float[Array, "*b"]:
        r"""$\rho_{\max} C^n / (C^n + K^n)$ for $C > 0$, 0 otherwise, evaluated as
        $\rho_{\max}\,\mathrm{sigmoid}(n(\ln C - \ln K))$ so that value and gradient stay finite for any
        $C \ge 0$ (the form $(K/C)^n$ overflows to inf for small $C$, and its gradient to NaN)."""
        positive = calcium > 0
        safe = jnp.where(positive, calcium, 1.0)
        logit = self.hill * (jnp.log(safe) - jnp.log(self.half_saturation))
        return jnp.where(positive, self.rate_max * jax.nn.sigmoid(logit), 0.0)


_DEFAULT_GAIN = {GChI: 0.1, LiRinzel: 3.0}


def default_coupling(model: AbstractCalciumModel) -> CalciumCoupling:
    r"""The default `CalciumCoupling` of `model`: `gain` 0.1 mM (`GChI`) or 3 µM (`LiRinzel`) per unit of
    $\phi_j(q) g_j$, `diffusion` 10/s, `rate_max` 1, `half_saturation` 1 µM, `hill` 2, `time_scale` 10 s.

    With these, a typical drive $\phi_j g_j \sim 10^{-2}$–$1$ puts the steady calcium in its graded range
    (G-ChI ≈ 0.4–0.8 µM for $Y_S$ = 1–100 µM; Li–Rinzel ≈ 0.5–1.3 µM for IP3 = 0.05–5 µM), and the default
    read ($T_r = 1$) lasts 10 model seconds, the time these models take to settle.
    """
    for cls, gain in _DEFAULT_GAIN.items():
        if isinstance(model, cls):
            return CalciumCoupling(gain=jnp.asarray(gain, model.dtype))
    raise TypeError(
        f"default_coupling: no default for {type(model).__name__}; pass coupling=CalciumCoupling(gain=...) explicitly"
    )


def _calcium_key(model: AbstractCalciumModel, y: dict) -> str:
    """The state name of the calcium variable (`model.calcium(y)` must return one entry of `y`)."""
    c = model.calcium(y)
    for name in model.state_names:
        if y[name] is c:
            return name
    raise TypeError(
        f"calcium: {type(model).__name__}.calcium(y) must return one of its state variables "
        f"{model.state_names} to be coupled by diffusion"
    )


class CalciumField(eqx.Module):
    r"""Calcium of the M processes of every query, in read time $u = t/T_r$; state: the model's dict with
    leaves of shape (L, M). Fields: `model`, `coupling`, presynaptic drive `phi_g` $= \phi_j(q) g_j$ (L, M),
    and the `params` (for $T_r$, $\tau_n$)."""

    model: AbstractCalciumModel
    coupling: CalciumCoupling
    phi_g: Float[Array, "L M"]
    params: NAParams
    key: str = eqx.field(static=True)

    def __call__(self, u, y, args):
        cp, prm = self.coupling, self.params
        t = u * prm.t_read
        drive = cp.gain * feature_rise(self.phi_g, t, prm.tau_n)
        dy = self.model.vector_field(t * cp.time_scale, y, drive)
        c = y[self.key]
        dy = dict(dy)
        dy[self.key] = dy[self.key] + cp.diffusion * (jnp.mean(c, axis=-1, keepdims=True) - c)
        return jax.tree.map(lambda d: prm.t_read * cp.time_scale * d, dy)

    def jacobian_diagonal(self, u, y, args):
        r"""For `Ros2`: the stacked vector field and the diagonal of its per-process Jacobian. The Jacobian–
        vector product with a tangent of ones sees only the zero-sum part of the diffusion; its own diagonal,
        $-D(1 - 1/M)$ on the calcium variable, is added here."""
        f, d = jacobian_diagonal(lambda y: self(u, y, args), y)
        M = y[self.key].shape[-1]
        scale = self.params.t_read * self.coupling.time_scale
        own = {name: jnp.zeros((), d.dtype) for name in y}
        own[self.key] = (scale * self.coupling.diffusion * (1.0 - 1.0 / M)).astype(d.dtype)
        return f, d - jnp.stack(jax.tree.leaves(own))


class NodeRates(AbstractRateSource):
    r"""The rate source of a calcium read: $\mathrm{rate}_j$ tabulated at the two Gauss nodes of each step of
    `grid`; a step's mean is the two-node Gauss–Legendre average (for `Magnus2`), the rate at a time is that of
    its step.

    Fields: `rates` (S, 2, L, M); `grid` (S + 1,), read time.
    """

    rates: Float[Array, "S 2 L M"]
    grid: Float[Array, " G"]

    def rate(self, u):
        k = jnp.clip(jnp.searchsorted(self.grid, u, side="right") - 1, 0, self.rates.shape[0] - 1)
        return jnp.mean(self.rates[k], axis=0)

    def window_mean(self, u0, u1):
        k = jnp.argmin(jnp.abs(self.grid[:-1] - u0))
        return jnp.mean(self.rates[k], axis=0)


def _geometric_then_uniform(first, n_geometric: int, n_uniform: int, dtype) -> Array:
    """0, then `n_geometric` points growing geometrically from `first` to 1/`n_uniform`, then the uniform points
    2/`n_uniform`, ..., 1: `n_geometric` + `n_uniform` - 1 steps."""
    first = jnp.minimum(first, 0.5 / (n_uniform * max(n_geometric, 2))).astype(dtype)
    k = jnp.arange(n_geometric, dtype=dtype) / max(n_geometric - 1, 1)
    geometric = first ** (1.0 - k) * (1.0 / n_uniform) ** k
    uniform = jnp.arange(2, n_uniform + 1, dtype=dtype) / n_uniform
    grid = jnp.concatenate([jnp.zeros(1, dtype), geometric, uniform])
    return grid.at[-1].set(1.0)  # exactly 1 under jit (diffrax's StepTo needs ts[-1] == t1)


def _fastest(params: NAParams, coupling: CalciumCoupling):
    return jnp.minimum(params.tau_n, params.tau_s / coupling.rate_max) / (4 * params.t_read)


def check_calcium_steps(calcium_steps: Any) -> None:
    """Raise unless `calcium_steps` is None or an integer >= 4 (the fixed calcium steps of a read)."""
    if calcium_steps is not None:
        check_int("calcium_steps", calcium_steps, minimum=4, or_none=True)


def calcium_read_grid(params: NAParams, coupling: CalciumCoupling, steps: int, dtype) -> Float[Array, " G"]:
    r"""Read grid (read time): `steps` geometric steps from the fastest transient
    $\min(\tau_n, \tau_s/\rho_{\max})$ up to $1/$`steps`, then `steps` - 1 uniform steps to 1 (so calcium,
    which varies on the model's time scale, is sampled evenly over the whole read)."""
    return _geometric_then_uniform(_fastest(params, coupling), steps, steps, dtype)


def calcium_step_grid(params: NAParams, coupling: CalciumCoupling, steps: int, dtype) -> Float[Array, " G"]:
    r"""The fixed grid of `steps` `Ros2` steps of a calcium solve (read time): a quarter of them geometric,
    resolving the rise of the drive (time constant $\tau_n$), the rest uniform up to 1."""
    n_geometric = steps // 4 + 1
    return _geometric_then_uniform(_fastest(params, coupling), n_geometric, steps - n_geometric + 1, dtype)


class CalciumRead(eqx.Module):
    """What a calcium read returns besides the outputs (for plots): the grid, the Gauss nodes, and the
    calcium and decay rates there, each (S, 2, L, M); `sigma` and `z` at $T_r$, (L, M)."""

    grid: Float[Array, " G"]
    nodes: Float[Array, "S 2"]
    calcium: Float[Array, "S 2 L M"]
    rates: Float[Array, "S 2 L M"]
    sigma: Float[Array, "L M"]
    z: Float[Array, "L M"]


def calcium_read(
    phi_q: Float[Array, "L M"],
    g: Float[Array, "L M"],
    params: NAParams,
    model: AbstractCalciumModel,
    coupling: CalciumCoupling,
    *,
    solver=None,
    stepsize_controller=None,
    adjoint=None,
    dt0=None,
    read_steps: int = READ_STEPS,
    calcium_steps: int | None = None,
    max_steps: int = MAX_STEPS,
    throw: bool = True,
) -> CalciumRead:
    r"""Solve the calcium read of every query at once (see the module docstring). `g` is the astrocyte weight
    vector each query sees, (L, M). `calcium_steps`: see `na_attention_calcium`."""
    dtype = phi_q.dtype
    L, M = phi_q.shape
    y0 = model.default_y0()
    for name, leaf in y0.items():
        if jnp.shape(leaf) != ():
            raise TypeError(
                f"calcium: expected scalar state variables (one compartment per process), "
                f"got {type(model).__name__}.{name} of shape {jnp.shape(leaf)}"
            )
    y0 = {name: jnp.full((L, M), leaf, dtype) for name, leaf in y0.items()}
    key = _calcium_key(model, y0)
    field = CalciumField(model=model, coupling=coupling, phi_g=phi_q * g, params=params, key=key)

    grid = calcium_read_grid(params, coupling, read_steps, dtype)
    u0, du = grid[:-1], jnp.diff(grid)
    offset = 0.5 / np.sqrt(3.0)
    nodes = jnp.stack([u0 + (0.5 - offset) * du, u0 + (0.5 + offset) * du], axis=-1)  # (S, 2)

    solver = Ros2() if solver is None else solver
    if calcium_steps is not None:
        stepsize_controller = diffrax.StepTo(ts=calcium_step_grid(params, coupling, calcium_steps, dtype))
        max_steps = calcium_steps
    elif stepsize_controller is None:
        stepsize_controller = _calcium_controller(dtype)
    adjoint = diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        solver,
        jnp.asarray(0.0, dtype),  # times in the state's dtype: diffrax promotes the state to theirs
        jnp.asarray(1.0, dtype),
        dt0,
        y0,
        saveat=diffrax.SaveAt(ts=nodes.reshape(-1)),
        stepsize_controller=stepsize_controller,
        adjoint=adjoint,
        max_steps=max_steps,
        throw=throw,
    )
    S = read_steps * 2 - 1
    calcium = model.calcium(sol.ys).reshape(S, 2, L, M)
    # A diverged explicit solve gives inf/NaN calcium, which the saturating rate would silently map to 0.
    calcium = eqx.error_if(
        calcium,
        ~jnp.all(jnp.isfinite(calcium)),
        "calcium: the calcium solve diverged (non-finite calcium); use the default "
        "solver and step-size controller (Ros2, adaptive), smaller fixed steps or a smaller "
        "coupling gain",
    )
    rates = coupling.rate(calcium)

    synapse = ReducedReadField(phi_q=phi_q, source=NodeRates(rates=rates, grid=grid), params=params)
    sigma, z = solve_read(synapse, grid, throw=throw)
    return CalciumRead(grid=grid, nodes=nodes, calcium=calcium, rates=rates, sigma=sigma, z=z)


def na_attention_calcium(
    phi_q: Float[Array, "L M"],
    phi_k: Float[Array, "L M"],
    v: Float[Array, "L N"],
    params: NAParams,
    calcium: AbstractCalciumModel | str | None = None,
    *,
    coupling: CalciumCoupling | None = None,
    causal: bool = True,
    mask: Bool[Array, " L"] | None = None,
    solver: diffrax.AbstractSolver | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    adjoint: diffrax.AbstractAdjoint | None = None,
    dt0: Float[ArrayLike, ""] | None = None,
    read_steps: int | None = None,
    calcium_steps: int | None = None,
    max_steps: int = MAX_STEPS,
    chunk_size: int = 64,
    throw: bool = True,
    return_read: bool = False,
) -> Float[Array, "L N"] | tuple[Float[Array, "L N"], CalciumRead]:
    r"""Neuron–astrocyte attention whose astrocyte processes carry biophysical calcium (docs/calcium.md).

    Tokens are written exactly as in `na_attention` (`write_reduced`); every query is then read from rest for
    $T_r$ with each process j driven by $u_j = \text{gain}\cdot h_j(t)\, g_j$ (glutamate for `GChI`, IP3 for
    `LiRinzel`), the processes exchanging calcium by all-to-all diffusion, and the synapse's decay rate a
    saturating function of the process's calcium:

    $$\tau_s\dot\sigma_j = 1 - \rho_{\max}\frac{C_j^n}{C_j^n + K^n}\sigma_j,\quad
      \tau_n\dot z_j = -z_j + h_j\sigma_j,\quad x(T_r) = c\,z(T_r).$$

    The abstract model's rate is $\bar p = \frac1M\phi(q)\cdot g$ (the attention denominator); a calcium model
    only approximates it, so the output is attention only where $\mathrm{rate}(C) \approx \bar p$.

    **Arguments:**

    - `phi_q`, `phi_k`: feature-neuron rates, (L, M), non-negative. `v`: values, (L, N).
    - `params`: an `NAParams` ($\tau_n$, $\tau_s$, $T_w$, $T_r$, $\tau_f$; $\tau_p$ is used by the abstract path
      only).
    - `calcium`: a `GChI`, a `LiRinzel` (or another `AbstractCalciumModel` with scalar states whose
      `calcium(y)` is one of them); or `None`, `"abstract"` or a `DiffusiveProcesses`, which all return
      `na_attention(..., mode="ode")` exactly (the closed-form abstract calcium, with `params.tau_p`; the
      fields of a `DiffusiveProcesses` are not used).
    - `coupling`: a `CalciumCoupling` (gain, diffusion, saturation, time scale); default
      `default_coupling(calcium)`.
    - `causal`, `mask`, `chunk_size`: as in `na_attention`.
    - `solver`, `stepsize_controller`, `adjoint`, `dt0`, `max_steps`: diffrax options of the calcium solve
      (default `Ros2()`, `PIDController` with rtol/atol 1e-6/1e-9 in float64 and 1e-4/1e-7 in float32,
      `RecursiveCheckpointAdjoint()`). A fixed-step controller (`ConstantStepSize` with `dt0`, `StepTo`)
      makes the output a smooth function of the parameters, as finite differences need; `Ros2` stays stable
      at steps where explicit solvers diverge, but needs steps of ~0.1 model second or less to be accurate
      (its fast variables are treated implicitly, the self-amplifying calcium release explicitly).
    - `read_steps`: the synapse equations use 2·`read_steps` − 1 exponential (`Magnus2`) steps (default 8, as in `na_attention`);
      on the abstract path it is passed to `na_attention` (default: its own, 8).
    - `calcium_steps`: `None` (default): the calcium solve uses `stepsize_controller`. An integer S: the
      calcium solve takes S fixed steps of `solver` (default `Ros2`) on `calcium_step_grid` (a quarter
      geometric, resolving the drive's rise, the rest uniform): fixed cost and memory, and a smooth
      function of the parameters, for training (`stepsize_controller` and `dt0` must then be left unset).
    - `throw`: raise if a solve fails (for example runs out of `max_steps`).
    - `return_read`: also return the `CalciumRead` (calcium and rates of every process over the read).

    **Returns:** $x(T_r)$ for each query, (L, N) (and the `CalciumRead` if `return_read`).

    References: Kozachkov, Kastanenka & Krotov, PNAS 120:e2219150120 (2023); De Pittà et al., J. Biol. Phys.
    35:383 (2009); Li & Rinzel, J. Theor. Biol. 166:461 (1994).
    """
    if (
        calcium is None
        or isinstance(calcium, DiffusiveProcesses)
        or (isinstance(calcium, str) and calcium == "abstract")
    ):
        if return_read:
            raise ValueError("return_read: only available for a biophysical calcium, got the abstract one")
        ignored = dict(
            coupling=coupling,
            solver=solver,
            stepsize_controller=stepsize_controller,
            adjoint=adjoint,
            dt0=dt0,
            calcium_steps=calcium_steps,
        )
        for name, value in ignored.items():
            if value is not None:
                raise ValueError(
                    f"{name}: has an effect only with a biophysical calcium model; expected None "
                    f"with the abstract astrocyte (calcium={calcium!r}), got {value!r}"
                )
        return na_attention(
            phi_q,
            phi_k,
            v,
            params,
            causal=causal,
            mode="ode",
            mask=mask,
            read_steps=READ_STEPS if read_steps is None else read_steps,
            chunk_size=chunk_size,
            throw=throw,
        )
    if not isinstance(calcium, AbstractCalciumModel):
        raise TypeError(
            f"calcium: expected an astroformer.calcium.AbstractCalciumModel, 'abstract' or None, got {calcium!r}"
        )
    if not isinstance(params, NAParams):
        raise TypeError(f"params: expected an astroformer.NAParams, got {type(params).__name__}")
    coupling = default_coupling(calcium) if coupling is None else coupling
    if not isinstance(coupling, CalciumCoupling):
        raise TypeError(f"coupling: expected a CalciumCoupling, got {type(coupling).__name__}")
    read_steps = READ_STEPS if read_steps is None else read_steps
    read_steps = check_int("read_steps", read_steps, minimum=2)
    check_calcium_steps(calcium_steps)
    if calcium_steps is not None:
        if stepsize_controller is not None or dt0 is not None:
            raise ValueError(
                "calcium_steps: fixes the calcium steps; expected stepsize_controller=None and "
                f"dt0=None with it, got {stepsize_controller!r} and {dt0!r}"
            )
    phi_q, phi_k, v, present = check_head_inputs(phi_q, phi_k, v, mask)
    phi_q = params.guard(phi_q, phi_q.dtype)

    memory = write_reduced(phi_k, v, params, present)
    g = memory.read_weights(causal)
    read = calcium_read(
        phi_q,
        g,
        params,
        calcium,
        coupling,
        solver=solver,
        stepsize_controller=stepsize_controller,
        adjoint=adjoint,
        dt0=dt0,
        read_steps=read_steps,
        calcium_steps=calcium_steps,
        max_steps=max_steps,
        throw=throw,
    )
    x = linear_attention_state(
        read.z, memory.keys, memory.values, memory.log_decay, causal=causal, chunk_size=chunk_size
    )
    return (x, read) if return_read else x


__all__ = [
    "CalciumCoupling",
    "CalciumRead",
    "default_coupling",
    "na_attention_calcium",
    "calcium_read",
    "calcium_read_grid",
    "calcium_step_grid",
]
