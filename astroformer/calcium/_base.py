"""The interface shared by every single-astrocyte calcium model."""

import abc
import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float


def _as_float_array(x: Any) -> Array:
    """Converter for model parameters: a JAX array of floating dtype.

    Python numbers (and integer arrays) become arrays of the default floating dtype, so
    the parameters follow the global precision (`jax_enable_x64`) at construction time
    and are picked up as trainable leaves by `eqx.filter_grad` / `eqx.is_inexact_array`.
    Floating arrays, including tracers, keep their dtype.
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(jnp.result_type(float))
    return x


def parameter(default: float) -> Any:
    """Declare a positive, trainable model parameter with a default value."""
    return eqx.field(default=default, converter=_as_float_array)


def check_positive_finite(name: str, value: Any, owner: str) -> None:
    """Raise `ValueError` unless `value` is concrete, positive and finite everywhere.

    Traced values (inside `jax.jit`, `jax.grad`, `jax.vmap`, ...) cannot be inspected
    and are accepted as they are.
    """
    if isinstance(value, jax.core.Tracer):
        return
    arr = np.asarray(value)
    if not (np.all(np.isfinite(arr)) and np.all(arr > 0)):
        shown = arr.item() if arr.size == 1 else arr
        raise ValueError(f"{owner}.{name} must be positive and finite, but got {shown!r}.")


class AbstractCalciumModel(eqx.Module):
    """Abstract base class for the calcium dynamics of one astrocyte.

    A calcium model is an autonomous-plus-drive ODE `dy/dt = f(t, y, u(t))` on a small
    dictionary of named state variables `y`, driven by a scalar input `u(t)` (for
    example extracellular glutamate, or IP3). Time is in seconds and concentrations in
    µM unless a subclass says otherwise. Concrete models are simulated by
    [`astroformer.calcium.simulate`][].

    Subclasses must provide:

    - `state_names`: a class-level tuple with the names of the state variables, in a
        fixed order (it is the order of `default_y0()`).
    - `default_y0()`, `vector_field(t, y, drive_value)` and `calcium(y)`.

    Every non-static field of a concrete model is a parameter: it must be positive and
    finite. This is checked in `__check_init__` whenever the value is concrete; when
    a model is built inside a JAX transformation (with traced values) the check is
    skipped. Hyperparameters (sizes) are `eqx.field(static=True)` and validated by the
    subclass.
    """

    state_names: eqx.AbstractClassVar[tuple[str, ...]]

    def __check_init__(self):
        owner = type(self).__name__
        for field in dataclasses.fields(self):
            if field.metadata.get("static", False):
                continue
            check_positive_finite(field.name, getattr(self, field.name), owner)

    @property
    def dtype(self) -> jnp.dtype:
        """The floating dtype of the model's parameters."""
        leaves = [leaf for leaf in jax.tree_util.tree_leaves(self) if eqx.is_array(leaf)]
        if not leaves:
            return jnp.result_type(float)
        return jnp.result_type(*leaves)

    @abc.abstractmethod
    def default_y0(self) -> dict[str, Float[Array, "..."]]:
        """The default initial state.

        **Returns:**

        A dictionary mapping each name in `state_names` to an array (a scalar for the
        biophysical models) in the model's dtype.
        """

    @abc.abstractmethod
    def vector_field(
        self,
        t: Float[ArrayLike, ""],
        y: dict[str, Float[Array, "..."]],
        drive_value: Float[ArrayLike, "*shape"],
    ) -> dict[str, Float[Array, "..."]]:
        """The time derivative of the state.

        **Arguments:**

        - `t`: time, in seconds (scalar). The models here are autonomous apart from the
            drive, but the argument is kept for non-autonomous subclasses.
        - `y`: the state, a dictionary with the keys `state_names`.
        - `drive_value`: the value of the drive at time `t` (a scalar, or an array broadcasting with the
            state's arrays; its meaning and units are documented by each model).

        **Returns:**

        A dictionary with the same keys and shapes as `y`: the derivatives, in units of
        the state per second.
        """

    @abc.abstractmethod
    def calcium(self, y: dict[str, Float[Array, "..."]]) -> Float[Array, "..."]:
        """The cytosolic calcium of state `y` (µM, or the model's calcium unit).

        **Arguments:**

        - `y`: a state dictionary (leaves may carry leading batch/time axes).

        **Returns:**

        The calcium variable, with the shape of the corresponding leaf of `y`.
        """
