"""The biophysical parameters of one neuron–astrocyte attention head."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

# One default per concept across the API (na_attention, na_attention_calcium, the layers, TrainConfig):
READ_STEPS = 8  # steps of a read's fixed-step solve
MAX_STEPS = 16384  # step budget of an adaptive read solve (running out raises)
NUM_FEATURES = 32  # feature neurons M per head (the layer, make_attention, Transformer, TrainConfig, distill)

_POSITIVE_FIELDS = ("tau_n", "tau_s", "tau_p", "t_write", "t_read")


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_positive(name: str, value: Any, *, or_none: bool = False) -> None:
    if (value is None and or_none) or not _is_concrete(value):
        return
    real = (isinstance(value, int | float) and not isinstance(value, bool)) or (
        hasattr(value, "dtype")
        and (jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer))
    )
    if not real:  # None, strings, bools, lists (stack per-head values into an array), complex numbers
        raise TypeError(
            f"NAParams.{name}: expected a positive number or a real array of them{' (or None)' if or_none else ''}, "
            f"got {value!r}"
        )
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"NAParams.{name}: expected a positive number, got {value!r}") from None
    if not np.all(np.isfinite(arr)) or not np.all(arr > 0):
        raise ValueError(f"NAParams.{name}: expected a positive, finite time constant, got {value!r}")


class NAParams(eqx.Module):
    r"""Time constants of the neuron–astrocyte attention head (Kozachkov, Kastanenka & Krotov, PNAS 2023;
    Kozachkov, Slotine & Krotov, arXiv 2311.08135, App. C). Equation numbers follow `model.md` §3.

    **Fields** (all positive scalars, or arrays of one value per head when stacked by
    `NeuronAstrocyteAttention`):

    - `tau_n`: neuron time constant: $\tau_n \dot h = -h + \phi(u)$, $\tau_n \dot x = -x + \dots$.
    - `tau_s`: synaptic time constant: $\tau_s \dot s_{ij} = -p_{ij} s_{ij} + c_{ij}$.
    - `tau_p`: calcium diffusion time constant: $\tau_p \dot p_{ij} = \sum_{kl}(p_{kl} - p_{ij})$; the processes
      synchronise at rate $NM/\tau_p$.
    - `t_write`: the window $T_w$ for which each token is presented while writing.
    - `t_read`: the read window $T_r$; the block returns $x(T_r)$.
    - `tau_f`: forgetting time of the Hebbian trace and astrocyte weights, or `None` (no forgetting, the paper).

    Nothing in the fixed point depends on `tau_n`, `tau_s`, `tau_p`: they set how fast and how exactly a finite
    read gets there. A read has settled when $\bar p\,T_r / \tau_s \gg 1$ and $T_r \gg \tau_n$, where
    $\bar p = \phi(q)\cdot g / M \approx \sum_t e^{q\cdot k_t} / M$; the write is exact up to
    $O(\tau_n / T_w)$.

    Values are checked when concrete (a non-positive, infinite or NaN time constant raises `ValueError`); inside
    `jax.jit`/`jax.grad` they are traced and not checked. To train them, optimise an unconstrained
    reparameterisation (see `astroformer.fit`), never the raw values.
    """

    tau_n: Float[ArrayLike, "*heads"] = 1e-3
    tau_s: Float[ArrayLike, "*heads"] = 1e-4
    tau_p: Float[ArrayLike, "*heads"] = 1.0
    t_write: Float[ArrayLike, "*heads"] = 1.0
    t_read: Float[ArrayLike, "*heads"] = 1.0
    tau_f: Float[ArrayLike, "*heads"] | None = None

    def __check_init__(self):
        for name in _POSITIVE_FIELDS:
            _check_positive(name, getattr(self, name))
        _check_positive("tau_f", self.tau_f, or_none=True)

    def guard(self, x, dtype=None):
        """`x` with a check of every time constant attached, for use in computations of floating `dtype`
        (default: the dtype each value has). Every time constant (`tau_n`, `tau_s`, `tau_p`, `t_write`,
        `t_read`, `tau_f`) must be positive and finite *and stay so in `dtype`*: one that underflows to 0
        (e.g. `tau_s=1e-50` in float32) or whose reciprocal overflows is refused too, since the equations
        divide by it.

        Concrete values raise `ValueError` naming the field at once. Traced values (under `jax.jit`,
        `jax.grad`, `jax.vmap`) get one runtime check (`eqx.branched_error_if`, naming the first bad field)
        attached to `x`: attach it to an input every computation uses, so that it is never dead code (a check
        attached to a parameter that a mode does not use would be dropped by the compiler).
        """
        flags, names = [], []
        for name in _POSITIVE_FIELDS + ("tau_f",):
            value = getattr(self, name)
            if value is None:
                continue
            # The dtype the computation will use: Python floats take `dtype`, arrays promote with it.
            compute = jnp.result_type(value, float) if dtype is None else jnp.result_type(value, dtype)
            if not jnp.issubdtype(compute, jnp.floating):
                compute = jnp.result_type(float)
            v = jnp.asarray(value).astype(compute)
            if _is_concrete(v):
                arr = np.asarray(v)
                with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
                    good = np.all(np.isfinite(arr)) and np.all(arr > 0) and np.all(np.isfinite(1 / arr))
                if not good:
                    underflow = np.all(np.asarray(value, dtype=float) > 0)
                    raise ValueError(
                        f"params.{name}: expected a positive, finite time constant representable in {v.dtype} "
                        f"(at least {np.finfo(v.dtype).tiny:.3g} with a finite reciprocal), got {value!r}"
                        + (f", which is {arr.tolist()} in {v.dtype}" if underflow else "")
                    )
            else:
                flags.append(jnp.any(~(v > 0) | ~jnp.isfinite(v) | ~jnp.isfinite(1 / v)))
                names.append((name, v.dtype))
        if not flags:
            return x
        flags = jnp.stack(flags)
        messages = [
            f"params.{name}: expected a positive, finite time constant representable in {dt}, got a "
            "non-positive, NaN/inf or underflowing value (checked at run time)"
            for name, dt in names
        ]
        return eqx.branched_error_if(x, jnp.any(flags), jnp.argmax(flags), messages)

    def checked(self, dtype=None) -> "NAParams":
        """The same parameters with `guard`'s check attached to every time constant (see `guard`; a
        computation that uses only some of them should rather guard one of its inputs)."""
        fields = tuple(n for n in _POSITIVE_FIELDS + ("tau_f",) if getattr(self, n) is not None)
        values = tuple(getattr(self, n) for n in fields)
        if all(_is_concrete(v) for v in values):
            self.guard(None, dtype)  # raises for a bad concrete value
            return self
        guarded = tuple(self.guard(jnp.asarray(v), dtype) for v in values)
        return eqx.tree_at(lambda p: tuple(getattr(p, n) for n in fields), self, guarded)

    def write_decay(self) -> Float[Array, "*heads"]:
        r"""$F = e^{-T_w/\tau_f}$, the factor by which the stored trace decays over one write window (1 if no
        forgetting)."""
        if self.tau_f is None:
            return jnp.ones_like(jnp.asarray(self.t_write))
        return jnp.exp(-jnp.asarray(self.t_write) / jnp.asarray(self.tau_f))

    def log_write_decay(self) -> Float[Array, "*heads"]:
        r"""$\log F = -T_w / \tau_f$ (0 if no forgetting)."""
        if self.tau_f is None:
            return jnp.zeros_like(jnp.asarray(self.t_write, dtype=float))
        return -jnp.asarray(self.t_write) / jnp.asarray(self.tau_f)

    @staticmethod
    def stack(params: "list[NAParams]") -> "NAParams":
        """Stack per-head parameters into one `NAParams` with a leading head axis."""
        forgets = [p.tau_f is None for p in params]
        if any(forgets) and not all(forgets):
            raise ValueError("NAParams.stack: either every head forgets (tau_f set) or none does")
        return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *params)


__all__ = ["MAX_STEPS", "NAParams", "READ_STEPS"]
