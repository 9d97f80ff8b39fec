"""Input checks shared by the public functions: every error names the argument, what was expected and what
came."""

import equinox as eqx
import jax.numpy as jnp


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")


def check_matrix(
    name: str, x, *, rows: int | None = None, cols: int | None = None, rows_from: str = "", cols_from: str = ""
):
    """Check that `x` is a 2-D floating array; returns it as an array."""
    if not hasattr(x, "shape"):
        raise TypeError(f"{name}: expected a 2-D JAX array, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(
            f"{name}: expected a 2-D array of shape (L, features), got shape {tuple(x.shape)}"
            " (use jax.vmap for batch and head axes)"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name}: expected a floating dtype, got {x.dtype}")
    if rows is not None and x.shape[0] != rows:
        raise ValueError(
            f"{name}: expected {rows} rows (the sequence length of {rows_from}), got shape {tuple(x.shape)}"
        )
    if cols is not None and x.shape[1] != cols:
        raise ValueError(f"{name}: expected {cols} columns (as {cols_from}), got shape {tuple(x.shape)}")
    return x


def check_mask(mask, length: int):
    if mask is None:
        return jnp.ones(length, bool)
    mask = jnp.asarray(mask)
    if mask.shape != (length,) or mask.dtype != bool:
        raise ValueError(
            f"mask: expected a boolean array of shape ({length},), got {mask.dtype} of shape {tuple(mask.shape)}"
        )
    return mask


def check_finite(name: str, x, *, nonnegative: bool = False):
    """Runtime check (works under jit): raise if `x` holds NaN/inf (or negative values)."""
    x = eqx.error_if(x, ~jnp.all(jnp.isfinite(x)), f"{name}: expected finite values, got NaN or inf")
    if nonnegative:
        x = eqx.error_if(
            x,
            jnp.any(x < 0),
            f"{name}: expected non-negative firing rates (phi >= 0), got negative values; use a positive feature map",
        )
    return x


def check_head_inputs(phi_q, phi_k, v, mask, *, nonnegative: bool = True):
    """The checks of one head's inputs: shapes, mask, and (at run time) finite, non-negative feature rates.

    **Returns:** `(phi_q, phi_k, v, present)` with the runtime checks attached and `present` the (L,) mask.
    """
    check_matrix("phi_q", phi_q)
    L, M = phi_q.shape
    check_matrix("phi_k", phi_k, rows=L, cols=M, rows_from="phi_q", cols_from="phi_q")
    check_matrix("v", v, rows=L, rows_from="phi_q")
    for name, size, what in (
        ("phi_q", L, "tokens L (rows)"),
        ("phi_q", M, "features M (columns)"),
        ("v", v.shape[1], "value dimensions N (columns)"),
    ):
        if size < 1:
            raise ValueError(
                f"{name}: expected at least one of its {what}, got shape "
                f"{tuple((phi_q if name == 'phi_q' else v).shape)}"
            )
    present = check_mask(mask, L)
    phi_q = check_finite("phi_q", phi_q, nonnegative=nonnegative)
    phi_k = check_finite("phi_k", phi_k, nonnegative=nonnegative)
    return phi_q, phi_k, check_finite("v", v), present


def check_output(name: str, out, dtype):
    """Runtime check (works under jit) of a result computed from inputs already checked to be finite: raise
    instead of returning NaN/inf, naming the likely cause (values too large for `dtype`)."""
    return eqx.error_if(
        out,
        ~jnp.all(jnp.isfinite(out)),
        f"{name}: got NaN/inf outputs from finite inputs: the feature rates phi_q, phi_k (or the "
        f"values v) are too large for {jnp.dtype(dtype).name} (their products summed over tokens "
        "overflow); scale the queries/keys (or values) down",
    )


def check_int(name: str, value, *, minimum: int = 1, or_none: bool = False) -> int:
    """Raise a `ValueError` naming `name` unless `value` is a Python/NumPy int (not a bool, not a float such as
    2.5) of at least `minimum`; returns it as a Python int. `or_none`: the argument may also be None, which the
    caller handles; the message says so. The one integer check of the library."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name}: expected {'None or ' if or_none else ''}{expected}, got {value!r}")
    return int(value)


def check_real(name: str, value, *, positive: bool | None = True, or_none: bool = False) -> float | None:
    """Raise a `ValueError` naming `name` unless `value` is a finite real number (a 0-d array too; not a bool),
    positive (with `positive=False`, non-negative; with `positive=None`, of any sign); returns it as a Python
    float. `or_none`: `None` is accepted too, and returned."""
    import math

    if or_none and value is None:
        return None
    try:  # Python and NumPy numbers and 0-d arrays; not bools or strings, which float() would also take
        number = math.nan if isinstance(value, bool | str) else float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and (positive is None or (number > 0 if positive else number >= 0))):
        sign = {True: "positive ", False: "non-negative ", None: ""}[positive]
        raise ValueError(f"{name}: expected {'None or ' if or_none else ''}a {sign}finite number, got {value!r}")
    return number


def check_creatable(name: str, folder, *, given=None) -> None:
    """Raise a `ValueError` naming `name` unless `folder` exists or can be created: its nearest existing
    ancestor (itself, if it exists) is a writable directory. `given` is the path as the user wrote it, for the
    message (default `folder`)."""
    import os
    from pathlib import Path

    ancestor = Path(folder)
    while not ancestor.exists():
        ancestor = ancestor.parent
    problem = "is not a directory: it is a file" if not ancestor.is_dir() else None
    if problem is None and not os.access(ancestor, os.W_OK):
        problem = "is not writable"
    if problem is not None:
        raise ValueError(
            f"{name}: expected a path whose folders can be created, got {str(folder if given is None else given)!r} "
            f"({str(ancestor)!r} {problem})"
        )


MAX_SEED = 2**31
"""Seeds are integers in [0, MAX_SEED): every PRNG the library seeds (JAX's keys, NumPy's generators, offsets such
as `seed * 10_000 + step`) takes them without overflow."""


def seed_argument(text: str) -> int:
    """An argparse `type` for `--seed`: an integer in [0, `MAX_SEED`), else argparse's error naming the flag."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value < MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**31), got {text}")
    return value


def check_bool(name: str, value) -> bool:
    """Raise unless `value` is a bool (so that e.g. `causal="no"`, which is truthy, is not taken as True)."""
    import numpy as np

    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


def check_na_layer(
    d_model, num_heads, *, num_features, feature_map, params, mode, state, causal, read_steps, chunk_size
) -> None:
    """The constructor checks of `NeuronAstrocyteAttention` (so bad arguments fail when the layer is built,
    not when it is first called)."""
    from ._head._params import NAParams

    check_int("d_model", d_model)
    check_int("num_heads", num_heads)
    if feature_map is None:
        check_int("num_features", num_features)
    if params is not None and not isinstance(params, NAParams):
        raise TypeError(f"params: expected an astroformer.NAParams or None, got {type(params).__name__}")
    check_choice("mode", mode, ("ode", "equilibrium"))
    check_choice("state", state, ("reduced", "full"))
    check_bool("causal", causal)
    check_int("read_steps", read_steps)
    check_int("chunk_size", chunk_size)
