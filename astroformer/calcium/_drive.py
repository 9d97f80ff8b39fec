"""Drives: traceable scalar functions of time that feed a calcium model."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._base import _as_float_array, check_positive_finite


class PulseTrain(eqx.Module):
    r"""A train of exponentially decaying pulses,
    $Y(t) = \sum_k a_k \exp(-\lambda (t - t_k))$ for $t \ge t_k$ (0 before).

    This is the neurotransmitter drive of the G-ChI reference protocol (pulses of
    glutamate cleared at $\lambda = 40$/s). An `eqx.Module`, so it is a pytree: the
    amplitude, times and decay can be traced, differentiated and `vmap`ped over, and
    [`astroformer.calcium.simulate`][] uses `times` as the drive's jump times.

    Build one with [`astroformer.calcium.pulse_train`][].

    **Fields:**

    - `times`: pulse onset times $t_k$, shape `(k,)`, in seconds.
    - `amplitude`: pulse amplitudes $a_k$, a scalar or shape `(k,)`.
    - `decay`: decay rate $\lambda$ (per second), positive scalar.
    """

    times: Float[Array, " k"] = eqx.field(converter=_as_float_array)
    amplitude: Float[Array, "*k"] = eqx.field(converter=_as_float_array)
    decay: Float[Array, ""] = eqx.field(converter=_as_float_array)

    def __check_init__(self):
        if self.times.ndim != 1:
            raise ValueError(
                f"pulse_train: `times` must be a 1-D array of pulse times, but got shape {self.times.shape}."
            )
        if self.amplitude.ndim > 1 or self.amplitude.shape not in (
            (),
            self.times.shape,
        ):
            raise ValueError(
                "pulse_train: `amplitude` must be a scalar or have the shape of `times` "
                f"{self.times.shape}, but got shape {self.amplitude.shape}."
            )
        if self.decay.ndim != 0:
            raise ValueError(f"pulse_train: `decay` must be a scalar, but got shape {self.decay.shape}.")
        for name in ("times", "amplitude"):
            value = getattr(self, name)
            if not isinstance(value, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(value))):
                raise ValueError(f"pulse_train: `{name}` must be finite, but got {np.asarray(value)!r}.")
        check_positive_finite("decay", self.decay, "pulse_train")

    def __call__(self, t: Float[ArrayLike, ""]) -> Float[Array, ""]:
        """The drive at time `t` (a scalar; traceable).

        **Arguments:**

        - `t`: time in seconds.

        **Returns:**

        $Y(t)$, a scalar.
        """
        elapsed = t - self.times
        started = elapsed >= 0
        # Double `where`: the exponential is never evaluated at negative elapsed time,
        # so neither the value nor its gradient can overflow before a pulse.
        safe_elapsed = jnp.where(started, elapsed, 0)
        pulses = self.amplitude * jnp.exp(-self.decay * safe_elapsed)
        return jnp.sum(jnp.where(started, pulses, 0))


def pulse_train(
    times: Float[ArrayLike, " k"],
    amplitude: Float[ArrayLike, "*k"],
    decay: Float[ArrayLike, ""],
) -> PulseTrain:
    r"""A drive made of exponentially decaying pulses.

    $$Y(t) = \sum_k a \exp\bigl(-\lambda (t - t_k)\bigr)\ \text{for}\ t \ge t_k,$$

    as in the G-ChI reference protocol (`shared/reference/README.md`).

    **Arguments:**

    - `times`: pulse onset times $t_k$ (seconds), shape `(k,)`.
    - `amplitude`: pulse amplitude $a$ (the drive's unit, e.g. mM of glutamate for
        [`astroformer.calcium.GChI`][]): a scalar, or one per pulse.
    - `decay`: decay rate $\lambda$ (per second), positive.

    **Returns:**

    A [`astroformer.calcium.PulseTrain`][]: call it with a time to get $Y(t)$. Its
    `times` are used as jump times by [`astroformer.calcium.simulate`][].

    !!! Example

        ```python
        >>> import jax.numpy as jnp
        >>> drive = pulse_train(jnp.arange(2.0, 29.0, 2.0), 0.5, 40.0)
        >>> float(drive(2.0)), float(drive(1.0))
        (0.5, 0.0)

        ```
    """
    # The fields' converter makes jax arrays of these; mypy does not apply converters to __init__ (python/mypy#17547).
    return PulseTrain(times=times, amplitude=amplitude, decay=decay)  # type: ignore[arg-type]
