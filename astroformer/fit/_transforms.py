r"""Parameterisations: maps between an unconstrained space, where the optimiser works, and the constrained
space of a parameter (positive time constants, bounded rates).

Every transform has `forward(u) -> x` (unconstrained to constrained) and `inverse(x) -> u`, elementwise and
differentiable. Fitting time constants in log space also makes the loss landscape far better conditioned:
a step in $\log\tau$ is a relative change, whatever the scale of $\tau$.

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
                raise ValueError(f"Bounded.inverse: expected values strictly inside ({self.lo}, {self.hi}), "
                                 f"got {arr!r}")
        w = (x - self.lo) / (self.hi - self.lo)
        return jnp.log(w) - jnp.log1p(-w)


__all__ = ["AbstractTransform", "Bounded", "Identity", "Positive"]
