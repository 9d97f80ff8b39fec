"""Standalone simulation of one astrocyte's calcium with diffrax."""

from collections.abc import Callable, Mapping
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._base import AbstractCalciumModel
from ._drive import PulseTrain

# Default tolerances of the adaptive step-size controller, per floating dtype. float64:
# the reference protocol is reproduced to ~5e-4 µM. float32: tolerances near machine
# precision make the implicit solver's error estimate noisy and the step count explode,
# so they are looser.
_DEFAULT_TOLERANCES = {
    jnp.dtype("float64"): (1e-6, 1e-9),
    jnp.dtype("float32"): (1e-4, 1e-7),
    jnp.dtype("float16"): (1e-2, 1e-4),
    jnp.dtype("bfloat16"): (1e-2, 1e-4),
}


def default_stepsize_controller(
    dtype: Any = None,
) -> diffrax.PIDController:
    """The step-size controller that [`astroformer.calcium.simulate`][] uses by default.

    **Arguments:**

    - `dtype`: the floating dtype of the state; `None` means the default floating dtype
        (float32, or float64 when `jax_enable_x64` is on).

    **Returns:**

    `diffrax.PIDController(rtol=1e-6, atol=1e-9)` for float64 and
    `diffrax.PIDController(rtol=1e-4, atol=1e-7)` for float32 (looser for half
    precision).
    """
    dtype = jnp.dtype(jnp.result_type(float) if dtype is None else dtype)
    rtol, atol = _DEFAULT_TOLERANCES.get(dtype, _DEFAULT_TOLERANCES[jnp.dtype("float32")])
    return diffrax.PIDController(rtol=rtol, atol=atol)


def _is_traced(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def _check_ts(ts: Any, dtype: Any) -> Float[Array, " times"]:
    ts = jnp.asarray(ts)
    if not jnp.issubdtype(ts.dtype, jnp.floating) or ts.dtype != dtype:
        ts = ts.astype(dtype)
    if ts.ndim != 1:
        raise ValueError(f"simulate: `ts` must be a 1-D array of output times, but got an array of shape {ts.shape}.")
    if ts.shape[0] < 2:
        raise ValueError(
            "simulate: `ts` must hold at least two times (the first is the initial "
            f"time, the last the final time), but got {ts.shape[0]}."
        )
    if _is_traced(ts):
        ts = eqx.error_if(
            ts,
            jnp.any(~jnp.isfinite(ts)) | jnp.any(jnp.diff(ts) <= 0),
            "simulate: `ts` must be finite and strictly increasing.",
        )
    else:
        values = np.asarray(ts)
        if not np.all(np.isfinite(values)):
            bad = np.flatnonzero(~np.isfinite(values))
            raise ValueError(f"simulate: `ts` must be finite, but got non-finite values at indices {bad.tolist()}.")
        steps = np.diff(values)
        if np.any(steps <= 0):
            i = int(np.flatnonzero(steps <= 0)[0])
            raise ValueError(
                "simulate: `ts` must be strictly increasing, but got "
                f"ts[{i}] = {values[i]!r} followed by ts[{i + 1}] = {values[i + 1]!r}."
            )
    return ts


def _initial_state(model: AbstractCalciumModel, y0: Mapping[str, ArrayLike] | None) -> dict[str, Array]:
    state = dict(model.default_y0())
    if y0 is None:
        return state
    if not isinstance(y0, Mapping):
        raise TypeError(
            "simulate: `y0` must be a mapping from state names to initial values "
            f"(names: {model.state_names}), but got {type(y0).__name__}."
        )
    unknown = [name for name in y0 if name not in state]
    if unknown:
        raise ValueError(
            f"simulate: `y0` has unknown state name(s) {unknown} for "
            f"{type(model).__name__}; expected a subset of {model.state_names}."
        )
    for name, value in y0.items():
        default = state[name]
        value = jnp.asarray(value)
        try:
            value = jnp.broadcast_to(value, default.shape)
        except ValueError:
            raise ValueError(
                f"simulate: `y0[{name!r}]` must have shape {default.shape} (or "
                f"broadcast to it), but got shape {value.shape}."
            ) from None
        if not _is_traced(value) and not np.all(np.isfinite(np.asarray(value))):
            raise ValueError(f"simulate: `y0[{name!r}]` must be finite, but got {np.asarray(value)!r}.")
        if not _is_traced(value):
            low, high = _STATE_RANGES.get(name, (0.0, None))
            arr = np.asarray(value)
            if np.any(arr < low) or (high is not None and np.any(arr > high)):
                expected = f"in [{low}, {high}]" if high is not None else f">= {low}"
                raise ValueError(
                    f"simulate: `y0[{name!r}]` must be {expected} (a "
                    f"{'gating fraction' if high is not None else 'concentration'}), "
                    f"but got {arr.tolist()!r}."
                )
        state[name] = value.astype(default.dtype)
    return state


# Physical ranges of the state variables: concentrations are non-negative; gating variables and the
# fraction of activated receptors lie in [0, 1].
_STATE_RANGES = {"h": (0.0, 1.0), "Gamma_A": (0.0, 1.0)}


def _check_drive(drive, ts, jump_ts, dtype):
    """Evaluate the drive at the output times, the jump times and between them; raise if it is NaN/inf or
    negative (the drives are concentrations). Traced drives get a runtime check instead.

    **Returns:** `(pred, message)` for a runtime check of traced values, or `None`."""
    probes = [ts, (ts[:-1] + ts[1:]) / 2]
    if jump_ts is not None:
        jumps = jnp.asarray(jump_ts, dtype).reshape(-1)
        probes += [jumps, jumps + (ts[-1] - ts[0]) * 1e-6]
    t = jnp.concatenate([jnp.asarray(p, dtype) for p in probes])
    try:
        values = jax.vmap(lambda t: jnp.asarray(drive(t)))(t)
    except Exception:  # noqa: BLE001 - a drive that cannot be vmapped is checked by the solve only
        return None
    message = (
        "simulate: `drive` must return finite, non-negative values (a concentration), but returned "
        "NaN/inf or a negative value"
    )
    if _is_traced(values):
        return ~jnp.all(jnp.isfinite(values)) | jnp.any(values < 0), message
    values, t = np.asarray(values), np.asarray(t)
    bad = ~np.isfinite(values) | (values < 0)
    if np.any(bad):
        i = int(np.flatnonzero(bad.reshape(len(t), -1).any(axis=1))[0])
        raise ValueError(f"{message}: {values.reshape(len(t), -1)[i].tolist()} at t = {float(t[i])!r}.")
    return None


def _vector_field(t, y, args):
    model, drive = args
    return model.vector_field(t, y, drive(t))


def simulate(
    model: AbstractCalciumModel,
    drive: Callable[[Float[Array, ""]], Float[ArrayLike, ""]],
    ts: Float[ArrayLike, " times"],
    *,
    y0: Mapping[str, ArrayLike] | None = None,
    jump_ts: Float[ArrayLike, " jumps"] | None = None,
    solver: diffrax.AbstractSolver | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    max_steps: int = 100_000,
    dt0: float | None = None,
    adjoint: diffrax.AbstractAdjoint | None = None,
    throw: bool = True,
) -> dict[str, Float[Array, "times ..."]]:
    r"""Simulate one astrocyte's calcium model under a given drive.

    Solves $\frac{dy}{dt} = f_\theta(t, y, u(t))$ from `ts[0]` to `ts[-1]` with diffrax
    and returns the state at the times `ts`. Differentiable (with respect to the model's
    parameters, `y0` and the drive's pytree leaves), `jit`-able and `vmap`-able.

    The default solver is the explicit 5th-order Runge–Kutta method `diffrax.Tsit5()`
    with `diffrax.PIDController(rtol=1e-6, atol=1e-9)` in float64 (`rtol=1e-4,
    atol=1e-7` in float32; see [`astroformer.calcium.default_stepsize_controller`][]),
    and the drive's discontinuities as jump times. This was chosen by measurement on
    the G-ChI reference protocol (30 s, 14 glutamate pulses, 2 CPU cores): `Tsit5`
    takes 572 steps in float64 (292 in float32), while the stiff-capable
    `diffrax.Kvaerno5()` took 7,343 steps (3,793 rejected, most by its nonlinear solver)
    in float64 and ran out of 100,000 steps in float32; `Kvaerno5` with an
    `optimistix.Newton` root finder took 2,216. The calcium models here are only mildly
    stiff (fastest rate ~150/s, during a pulse), and the adaptive controller keeps an
    explicit method stable. With these defaults the reference protocol agrees with
    Brian 2 to ~1.5e-4 µM in C and ~5.4e-4 µM in I (float64 and float32 alike).

    !!! tip

        For genuinely stiff settings, e.g. [`astroformer.calcium.DiffusiveProcesses`][]
        with many processes (rate `n / tau_p`), or parameters trained into fast regimes,
        pass `solver=astroformer.Ros2()` (a linearly implicit Rosenbrock–W method, L-stable
        for fast self-relaxing variables, see `docs/calcium.md`; 2.2e-4 µM from Brian 2 on
        the reference protocol with `PIDController(rtol=1e-4, atol=1e-7)`), or an implicit
        solver with a Newton root finder:
        `solver=diffrax.Kvaerno5(root_finder=optimistix.Newton(rtol=1e-6, atol=1e-9))`
        (use float64: implicit solvers are fragile in float32).

    **Arguments:**

    - `model`: an [`astroformer.calcium.AbstractCalciumModel`][], e.g.
        [`astroformer.calcium.GChI`][].
    - `drive`: a JAX-traceable function of time `t` (seconds) returning a scalar, the
        model's drive (its meaning and unit are set by the model: glutamate in mM for
        `GChI`, IP3 in µM for `LiRinzel`). Use an `eqx.Module` such as the one
        returned by [`astroformer.calcium.pulse_train`][] when you want to
        differentiate or `vmap` over its parameters.
    - `ts`: output times (seconds), 1-D, finite and strictly increasing, at least two
        of them. The integration runs from `ts[0]` to `ts[-1]`.
    - `y0`: initial values for some or all of the state variables (`model.state_names`);
        the others take `model.default_y0()`. Unknown names raise `ValueError`.
    - `jump_ts`: times at which the drive is discontinuous (e.g. pulse onsets), passed
        to `diffrax.ClipStepSizeController(..., jump_ts=jump_ts)` so that the solver
        steps exactly up to each jump and restarts after it instead of rejecting steps
        to find it. Defaults to `drive.times` when `drive` is a
        [`astroformer.calcium.PulseTrain`][] and the step-size controller is adaptive,
        and to none otherwise. Passing `jump_ts` requires an adaptive controller.
    - `solver`: a diffrax solver; default `diffrax.Tsit5()`.
    - `stepsize_controller`: a diffrax step-size controller; default as above.
    - `max_steps`: the maximum number of solver steps.
    - `dt0`: the initial step size; `None` lets an adaptive controller choose it
        (must be given for `diffrax.ConstantStepSize`).
    - `adjoint`: how to differentiate, default
        `diffrax.RecursiveCheckpointAdjoint()`.
    - `throw`: if `True`, a failed solve raises a `RuntimeError` (out of steps: it says
        so and suggests a larger `max_steps`). If `False`, no check is made and the
        values after the failure are unspecified (diffrax fills them with `inf`).

    **Returns:**

    A dictionary with one entry per state variable (`model.state_names`), each of shape
    `(len(ts),) + state_shape` (i.e. `(len(ts),)` for the scalar biophysical states),
    and `"t"`: the times `ts`.

    !!! Example

        ```python
        >>> import jax.numpy as jnp
        >>> from astroformer.calcium import GChI, pulse_train, simulate
        >>> drive = pulse_train(jnp.arange(2.0, 29.0, 2.0), 0.5, 40.0)
        >>> out = simulate(GChI(), drive, jnp.linspace(0.0, 30.0, 301))
        >>> sorted(out)
        ['C', 'Gamma_A', 'I', 'h', 't']

        ```
    """
    if not isinstance(model, AbstractCalciumModel):
        raise TypeError(
            f"simulate: `model` must be an astroformer.calcium.AbstractCalciumModel, but got {type(model).__name__}."
        )
    if not callable(drive):
        raise TypeError(
            f"simulate: `drive` must be a function of time returning a scalar, but got {type(drive).__name__}."
        )
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"simulate: `max_steps` must be a positive integer, but got {max_steps!r}.")
    state = _initial_state(model, y0)
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(state))
    ts = _check_ts(ts, dtype)

    if solver is None:
        solver = diffrax.Tsit5()
    if stepsize_controller is None:
        stepsize_controller = default_stepsize_controller(dtype)
    adaptive = isinstance(stepsize_controller, diffrax.AbstractAdaptiveStepSizeController)
    if jump_ts is None and isinstance(drive, PulseTrain) and adaptive:
        jump_ts = drive.times
    if jump_ts is not None:
        if not adaptive:
            raise ValueError(
                "simulate: `jump_ts` needs an adaptive `stepsize_controller` (such as "
                "diffrax.PIDController), but got "
                f"{type(stepsize_controller).__name__}."
            )
        # Jump times only place steps: no gradient flows through them (the drive's
        # own dependence on its pulse times is differentiated via the vector field).
        jump_ts = jax.lax.stop_gradient(jnp.asarray(jump_ts).astype(ts.dtype))
        if jump_ts.ndim != 1:
            raise ValueError(f"simulate: `jump_ts` must be 1-D, but got shape {jump_ts.shape}.")
        stepsize_controller = diffrax.ClipStepSizeController(stepsize_controller, jump_ts=jump_ts)
    if adjoint is None:
        adjoint = diffrax.RecursiveCheckpointAdjoint()
    drive_check = _check_drive(drive, ts, jump_ts, dtype)

    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(_vector_field),
        solver,
        t0=ts[0],
        t1=ts[-1],
        dt0=dt0,
        y0=state,
        args=(model, drive),
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=stepsize_controller,
        adjoint=adjoint,
        max_steps=max_steps,
        throw=False,
    )
    ys = solution.ys
    if drive_check is not None:
        ys = eqx.error_if(ys, *drive_check)
    if throw:
        result = solution.result
        ys = eqx.error_if(
            ys,
            result == diffrax.RESULTS.max_steps_reached,
            f"simulate: the solver ran out of steps (max_steps={max_steps}) before "
            "reaching ts[-1]. Increase `max_steps`, loosen the tolerances of "
            "`stepsize_controller`, or pass the drive's discontinuities as `jump_ts`.",
        )
        ys = eqx.error_if(
            ys,
            result != diffrax.RESULTS.successful,
            "simulate: the solver failed (for example an implicit step that did not "
            "converge, or a non-finite state). Try tighter tolerances, a different "
            "`solver`, or check the model parameters and `y0`.",
        )
    out = dict(ys)
    out["t"] = ts
    return out
