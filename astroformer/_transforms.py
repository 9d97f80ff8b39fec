r"""Parameterisations: maps between an unconstrained space, where the optimiser works, and the constrained
space of a parameter (positive time constants, bounded rates), and the wrapper that stores a parameter of a
model in its unconstrained coordinate.

Every transform has `forward(u) -> x` (unconstrained to constrained) and `inverse(x) -> u`, elementwise and
differentiable. Fitting time constants in log space also makes the loss landscape far better conditioned:
a step in $\log\tau$ is a relative change, whatever the scale of $\tau$.

`Constrained(u, transform)` is a leaf of a model that holds $u$ and means $x = \text{forward}(u)$; `unwrap`
replaces every such leaf by its value at call time. An optimiser that updates every inexact array of a model
(`astroformer train`'s, `fit`'s) then updates $u$, and the value stays in the domain whatever the step. The
same pattern as paramax's `Parameterize`/`unwrap` in the Equinox ecosystem.

References: the same device as Jaxley's `ParamTransform` (Deistler et al., "Differentiable simulation enables
large-scale training of detailed biophysical models of neural dynamics", 2024) and as Stan's constrained
parameters.
"""

import abc
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


class AbstractTransform(eqx.Module):
    """A bijection between $\\mathbb{R}$ and a parameter's domain, applied elementwise."""

    @abc.abstractmethod
    def forward(self, u: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        """Unconstrained `u` to the constrained value."""

    @abc.abstractmethod
    def inverse(self, x: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        """Constrained value `x` to the unconstrained `u` (raises `ValueError` outside the domain when
        `x` is concrete)."""


class Identity(AbstractTransform):
    """No constraint: $x = u$. For gains and feature-neuron tuning weights."""

    def forward(self, u):
        return jnp.asarray(u)

    def inverse(self, x):
        return jnp.asarray(x)


class Positive(AbstractTransform):
    r"""A positive parameter.

    - `kind="log"` (default): $x = e^u$, $u = \log x$: steps are relative changes (good for time constants
      spanning orders of magnitude).
    - `kind="softplus"`: $x = \log(1 + e^u)$, $u = \log(e^x - 1)$: linear for large $x$.
    """

    kind: Literal["log", "softplus"] = eqx.field(static=True, default="log")

    def __check_init__(self):
        if self.kind not in ("log", "softplus"):
            raise ValueError(f"Positive.kind: expected 'log' or 'softplus', got {self.kind!r}")

    def forward(self, u):
        u = jnp.asarray(u)
        return jnp.exp(u) if self.kind == "log" else jax.nn.softplus(u)

    def inverse(self, x):
        x = jnp.asarray(x)
        if _concrete(x) and not np.all(np.asarray(x) > 0):
            raise ValueError(f"Positive.inverse: expected positive values, got {np.asarray(x)!r}")
        return jnp.log(x) if self.kind == "log" else x + jnp.log(-jnp.expm1(-x))


class Bounded(AbstractTransform):
    r"""A parameter in the open interval $(lo, hi)$: $x = lo + (hi - lo)\,\sigma(u)$,
    $u = \mathrm{logit}((x - lo)/(hi - lo))$.

    **Arguments:** `lo < hi`, finite floats.
    """

    lo: float = eqx.field(static=True)
    hi: float = eqx.field(static=True)

    def __check_init__(self):
        if not (np.isfinite(self.lo) and np.isfinite(self.hi) and self.lo < self.hi):
            raise ValueError(f"Bounded: expected finite bounds lo < hi, got lo={self.lo!r}, hi={self.hi!r}")

    def forward(self, u):
        return self.lo + (self.hi - self.lo) * jax.nn.sigmoid(jnp.asarray(u))

    def inverse(self, x):
        x = jnp.asarray(x)
        if _concrete(x):
            arr = np.asarray(x)
            if not np.all((arr > self.lo) & (arr < self.hi)):
                raise ValueError(
                    f"Bounded.inverse: expected values strictly inside ({self.lo}, {self.hi}), got {arr!r}"
                )
        w = (x - self.lo) / (self.hi - self.lo)
        return jnp.log(w) - jnp.log1p(-w)


class Constrained(eqx.Module):
    r"""A parameter stored in its unconstrained coordinate: it means `transform.forward(raw)`.

    Build one from a constrained value with `Constrained.of(x, transform)`; read it with `.value`, or replace
    every `Constrained` of a pytree by its value with `unwrap`.

    **Fields:** `raw` ($u$, any shape, the array an optimiser updates) and `transform` (an `AbstractTransform`).
    """

    raw: Float[Array, "*shape"]
    transform: AbstractTransform

    @classmethod
    def of(cls, x: Float[ArrayLike, "*shape"], transform: AbstractTransform) -> "Constrained":
        """Wrap the constrained value `x` (checked against the transform's domain when concrete)."""
        return cls(transform.inverse(x), transform)

    @property
    def value(self) -> Float[Array, "*shape"]:
        """The constrained value `transform.forward(raw)`."""
        return self.transform.forward(self.raw)


def is_constrained(x) -> bool:
    """Whether `x` is a `Constrained` leaf (for `is_leaf=` in tree maps)."""
    return isinstance(x, Constrained)


def unwrap(tree):
    """`tree` with every `Constrained` replaced by its value (call this where the model is used)."""
    return jax.tree.map(lambda x: x.value if is_constrained(x) else x, tree, is_leaf=is_constrained)


def positive(tree):
    """`tree` with every inexact array leaf stored as `Constrained.of(leaf, Positive())` (log coordinate);
    `None` stays `None`. Leaves that are already `Constrained` are kept as they are."""
    if tree is None:
        return None
    return jax.tree.map(
        lambda x: Constrained.of(x, Positive()) if eqx.is_inexact_array(x) else x, tree, is_leaf=is_constrained
    )


__all__ = [
    "AbstractTransform",
    "Bounded",
    "Constrained",
    "Identity",
    "Positive",
    "is_constrained",
    "positive",
    "unwrap",
]
