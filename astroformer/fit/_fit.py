r"""`fit`: gradient-based fitting of the neuron–astrocyte dynamics, in the manner of Jaxley.

A chosen set of leaves of the model (NAParams time constants, the feature map's tuning `W`, input gains) is
freed, every other leaf frozen (`eqx.partition` with a filter spec built from their names). Each free leaf is
optimised in an unconstrained space through its parameterisation ($\tau = e^u$, bounds by a sigmoid, ...).
The whole optimisation is one `lax.scan` over steps inside one `jit`, so `fit` composes with `jax.vmap` /
`eqx.filter_vmap` over targets (repeated noise draws) or over initial guesses (multi-start).

References: Deistler et al., "Differentiable simulation enables large-scale training of detailed biophysical
models of neural dynamics" (Jaxley), 2024; Kidger, "On Neural Differential Equations", 2021 (adjoints).
"""

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float

from .._transforms import AbstractTransform, Constrained, Identity, Positive
from .._validate import check_int
from ._model import NAModel
from ._targets import as_target

_PARAM_FIELDS = ("tau_n", "tau_s", "tau_p", "t_write", "t_read", "tau_f")


def _getter(name: str) -> Callable:
    parts = name.split(".")
    return lambda tree: functools.reduce(getattr, parts, tree)


def _canonical(model, name: str) -> str:
    if not isinstance(name, str) or not name:
        raise TypeError(f"free: expected parameter names (str), got {name!r}")
    if isinstance(model, NAModel) and name in _PARAM_FIELDS:
        return "params." + name
    return name


def resolve_free(model: eqx.Module, free) -> "_Parameterisation":
    r"""Read `free` into the parameterisation of the free leaves, each name checked against `model`.

    Names are dotted attribute paths into the model (`"params.tau_s"`, `"feature_map.W"`, `"qk_gain"`); a bare
    `NAParams` field name (`"tau_s"`) means `"params.tau_s"`. The default transform is `Positive()` for
    time constants (`NAParams` fields) and `Identity()` otherwise. The names as the user wrote them are kept
    as `labels` (the keys of `FitResult.params`).
    """
    if isinstance(free, str):
        free = [free]
    if isinstance(free, Mapping):
        items = list(free.items())
    elif isinstance(free, Sequence):
        items = [(name, None) for name in free]
    else:
        raise TypeError(
            f"free: expected a name, a list of names or a dict name -> transform, got {type(free).__name__}"
        )
    if not items:
        raise ValueError("free: expected at least one free parameter, got none")
    out: dict[str, AbstractTransform] = {}
    labels = []
    for name, transform in items:
        full = _canonical(model, name)
        try:
            value = _getter(full)(model)
        except AttributeError:
            raise ValueError(
                f"free: {name!r} is not a leaf of the model (expected e.g. 'tau_s', 'params.tau_p', "
                f"'feature_map.W', 'qk_gain', 'v_gain')"
            ) from None
        if value is None:
            raise ValueError(f"free: {name!r} is None in the model; give it a value before fitting it")
        if not (eqx.is_array(value) or isinstance(value, float | int)) or isinstance(value, bool):
            raise ValueError(f"free: {name!r} must be a number or a floating array, got {type(value).__name__}")
        if full == "feature_map.W" and getattr(getattr(model, "feature_map", None), "trainable", True) is False:
            raise ValueError(
                "free: 'feature_map.W' is frozen by the feature map itself (trainable=False); "
                "build it with trainable=True to fit its tuning"
            )
        if transform is None:
            transform = Positive() if full.startswith("params.") else Identity()
        if not isinstance(transform, AbstractTransform):
            raise TypeError(
                f"free[{name!r}]: expected an AbstractTransform (Positive(), Bounded(lo, hi), "
                f"Identity()), got {type(transform).__name__}"
            )
        if full in out:
            raise ValueError(f"free: {full!r} given twice")
        out[full] = transform
        labels.append(name)
    return _Parameterisation(names=tuple(out), transforms=tuple(out.values()), labels=tuple(labels))


def free_filter_spec(model: eqx.Module, names: Sequence[str]):
    """A filter spec for `eqx.partition`: True at the named leaves, False at every other leaf."""
    getters = [_getter(n) for n in names]
    spec = jax.tree.map(lambda _: False, model)
    return eqx.tree_at(lambda m: tuple(g(m) for g in getters), spec, tuple(True for _ in names))


class _Parameterisation(eqx.Module):
    """Free part of the model in unconstrained coordinates <-> constrained model: each free leaf is held as a
    `Constrained` (the wrapper `NeuronAstrocyteAttention` uses for its calcium parameters), so the optimiser
    updates `raw` and the model sees `value`."""

    names: tuple[str, ...] = eqx.field(static=True)
    transforms: tuple[AbstractTransform, ...] = eqx.field(static=True)
    labels: tuple[str, ...] = eqx.field(static=True)  # the names as the user wrote them

    def _where(self, tree):
        return tuple(_getter(n)(tree) for n in self.names)

    def split(self, model, dtype):
        """(unconstrained free part, with `Constrained` leaves; frozen part)."""
        free, frozen = eqx.partition(model, free_filter_spec(model, self.names))
        values = tuple(Constrained.of(jnp.asarray(v, dtype), t) for t, v in zip(self.transforms, self._where(free)))
        return eqx.tree_at(self._where, free, values), frozen

    def constrain(self, u):
        return eqx.tree_at(self._where, u, tuple(c.value for c in self._where(u)))

    def model(self, u, frozen):
        return eqx.combine(self.constrain(u), frozen)

    def scalars(self, u) -> dict[str, Array]:
        return {n: c.value for n, c in zip(self.names, self._where(u)) if c.raw.size == 1}


class FitResult(eqx.Module):
    """The outcome of `fit`.

    - `model`: the fitted model (free leaves at their final values, the rest untouched).
    - `loss_history`: the loss before each step and after the last, (steps + 1,).
    - `grad_norm`: norm of the final gradient in unconstrained coordinates, scalar.
    - `grad_norm_history`: the same before each step and after the last, (steps + 1,).
    - `param_history`: `{name: (steps + 1,)}`, the constrained value of each scalar free parameter.
    - `free` (static): the free parameter names.
    """

    model: eqx.Module
    loss_history: Float[Array, " T"]
    grad_norm: Float[Array, ""]
    grad_norm_history: Float[Array, " T"]
    param_history: dict[str, Float[Array, " T"]]
    free: tuple[str, ...] = eqx.field(static=True)

    @property
    def loss(self) -> Float[Array, "*batch"]:
        """The final loss."""
        return self.loss_history[..., -1]

    @property
    def params(self) -> dict[str, Float[Array, "*batch"]]:
        """The final value of each scalar free parameter (batched as the fits were, under `eqx.filter_vmap`)."""
        return {name: h[..., -1] for name, h in self.param_history.items()}


def _gradient_mode(model, gradient):
    if gradient is None:
        return "forward" if isinstance(getattr(model, "adjoint", None), diffrax.ForwardMode) else "reverse"
    if gradient not in ("forward", "reverse"):
        raise ValueError(f"gradient: expected 'forward', 'reverse' or None, got {gradient!r}")
    return gradient


def _value_and_grad(loss_fn, u, mode):
    if mode == "forward":
        grad, value = jax.jacfwd(lambda w: (loss_fn(w),) * 2, has_aux=True)(u)
        return value, grad
    return jax.value_and_grad(loss_fn)(u)


@eqx.filter_jit
def _run(u0, frozen, target, param: _Parameterisation, optimiser, steps: int, mode: str, progress):
    def loss_fn(u):
        return target(param.model(u, frozen))

    extra = isinstance(optimiser, optax.GradientTransformationExtraArgs)

    def step(carry, i):
        u, state = carry
        value, grad = _value_and_grad(loss_fn, u, mode)
        if progress is not None:
            jax.debug.callback(progress, i, value)
        kwargs = dict(value=value, grad=grad, value_fn=loss_fn) if extra else {}
        updates, state = optimiser.update(grad, state, u, **kwargs)
        return (optax.apply_updates(u, updates), state), (value, optax.tree.norm(grad), param.scalars(u))

    (u, _), (losses, norms, scalars) = jax.lax.scan(step, (u0, optimiser.init(u0)), jnp.arange(steps))
    value, grad = _value_and_grad(loss_fn, u, mode)
    final = param.scalars(u)
    join = lambda h, x: jnp.concatenate([h, x[None]])  # noqa: E731
    history = {n: join(scalars[n], final[n]) for n in final}
    gnorm = optax.tree.norm(grad)
    return param.model(u, frozen), join(losses, value), gnorm, join(norms, gnorm), history


@functools.lru_cache(maxsize=16)
def _adam(learning_rate: float):
    return optax.adam(learning_rate)


def fit(
    model: eqx.Module,
    target,
    free,
    *,
    optimiser: optax.GradientTransformation | None = None,
    learning_rate: float = 0.05,
    steps: int = 200,
    adjoint: diffrax.AbstractAdjoint | None = None,
    gradient: Literal["forward", "reverse"] | None = None,
    dtype=None,
    progress: Callable[[Array, Array], None] | None = None,
) -> FitResult:
    r"""Fit the free parameters of `model` to `target` by gradient descent in unconstrained coordinates.

    **Arguments:**

    - `model`: an `NAModel` (or any Equinox module that `target` accepts).
    - `target`: a `TraceTarget` (recorded time courses), an `AttentionTarget` (a softmax head's outputs), any
      `AbstractTarget`, or a callable `loss(model) -> scalar`.
    - `free`: the names of the parameters to fit (`"tau_s"`, `"params.tau_p"`, `"feature_map.W"`,
      `"qk_gain"`, `"v_gain"`), or a dict `{name: transform}` with `Positive()`, `Bounded(lo, hi)`,
      `Identity()` (default: `Positive()` for time constants, `Identity()` otherwise). All other leaves stay
      frozen.
    - `optimiser`: an optax optimiser (default `optax.adam(learning_rate)`); optimisers that need the loss
      (`optax.lbfgs`) get `value`, `grad` and `value_fn`.
    - `learning_rate`: of the default Adam.
    - `steps`: number of optimiser steps (one `lax.scan`).
    - `adjoint`: overrides `model.adjoint` (an `NAModel`): `diffrax.RecursiveCheckpointAdjoint()`,
      `diffrax.DirectAdjoint()` or `diffrax.ForwardMode()`.
    - `gradient`: `"reverse"` (`jax.grad`) or `"forward"` (`jax.jacfwd`, cheap for a handful of parameters);
      default: forward exactly when the adjoint is `ForwardMode`.
    - `dtype`: dtype of the free parameters (default: the global float).
    - `progress`: optional host callback `progress(step, loss)` called at every step (through
      `jax.debug.callback`; e.g. to drive a progress bar).

    **Returns:** a `FitResult`.

    The model's read is a fixed-step solve: against recorded traces (`TraceTarget`) with the default
    `NAModel.substeps=4` the traces differ from an exact solve by ~1e-4–3e-4 (relative), so the optimum of a
    fit to exact data sits ~1e-3 (relative) from the true parameters; use `substeps=16` or more for tighter
    fits (the error falls as substeps⁻²; see `TraceTarget`).

    Works under `eqx.filter_vmap` (over targets or over initial models) and `jax.jit`. Called eagerly, it raises
    `RuntimeError` (naming the step) if the loss stops being finite; under a transformation the loss history is
    returned as it is, for the caller to check.

    >>> result = fit(model, TraceTarget.from_traces(data, q, k, v), ["tau_n", "tau_s", "tau_p"], steps=300)
    >>> result.params["tau_s"], result.loss_history[-1]
    """
    if not isinstance(model, eqx.Module):
        raise TypeError(f"model: expected an NAModel (an Equinox module), got {type(model).__name__}")
    steps = check_int("steps", steps)
    if adjoint is not None:
        if not isinstance(model, NAModel):
            raise TypeError(f"adjoint: only an NAModel carries an adjoint, got a {type(model).__name__}")
        if not isinstance(adjoint, diffrax.AbstractAdjoint):
            raise TypeError(f"adjoint: expected a diffrax adjoint, got {type(adjoint).__name__}")
        model = NAModel(
            params=model.params,
            feature_map=model.feature_map,
            qk_gain=model.qk_gain,
            v_gain=model.v_gain,
            causal=model.causal,
            adjoint=adjoint,
            read_steps=model.read_steps,
            substeps=model.substeps,
        )
    lowering = "learning_rate" if optimiser is None else "the optimiser's learning rate"
    if optimiser is None:
        try:
            rate = float(learning_rate)
        except (TypeError, ValueError):
            rate = float("nan")
        if not 0 < rate < float("inf"):
            raise ValueError(f"learning_rate: expected a positive finite number, got {learning_rate!r}")
        optimiser = _adam(rate)
    elif not isinstance(optimiser, optax.GradientTransformation):
        raise TypeError(f"optimiser: expected an optax.GradientTransformation, got {type(optimiser).__name__}")
    mode = _gradient_mode(model, gradient)
    target = as_target(target)
    param = resolve_free(model, free)
    dtype = jnp.result_type(float) if dtype is None else dtype
    u0, frozen = param.split(model, dtype)
    fitted, losses, gnorm, norms, history = _run(u0, frozen, target, param, optimiser, steps, mode, progress)
    # Concrete only: under `eqx.filter_vmap` or `jax.jit` (e.g. `distill_heads`) the caller checks the result.
    finite = None if isinstance(losses, jax.core.Tracer) else np.isfinite(np.asarray(losses))
    if finite is not None and not finite.all():
        first = int(np.argmin(finite))
        raise RuntimeError(
            f"fit: the loss became {float(np.asarray(losses)[first])} at step {first} of {steps} (step 0 is the "
            f"start): the optimiser diverged or the target holds NaN/inf; lower {lowering} or check the target"
        )
    history = {label: history[name] for label, name in zip(param.labels, param.names) if name in history}
    return FitResult(
        model=fitted,
        loss_history=losses,
        grad_norm=gnorm,
        grad_norm_history=norms,
        param_history=history,
        free=param.names,
    )


def value_and_grad(
    model: eqx.Module, target, free, *, gradient: Literal["forward", "reverse"] | None = None, dtype=None
) -> tuple[Float[Array, ""], dict[str, Array]]:
    """The loss and its gradient with respect to the *unconstrained* free parameters, exactly as `fit` uses
    them (same parameterisation, adjoint and differentiation mode).

    **Returns:** `(loss, {name: gradient})`.
    """
    mode = _gradient_mode(model, gradient)
    target = as_target(target)
    param = resolve_free(model, free)
    u0, frozen = param.split(model, jnp.result_type(float) if dtype is None else dtype)
    value, grad = eqx.filter_jit(lambda u, f, t: _value_and_grad(lambda w: t(param.model(w, f)), u, mode))(
        u0, frozen, target
    )
    return value, {label: c.raw for label, c in zip(param.labels, param._where(grad))}


__all__ = ["FitResult", "fit", "free_filter_spec", "value_and_grad"]
