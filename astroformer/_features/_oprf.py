r"""Optimal positive random features (OPRF, the positive part of FAVOR++): feature neurons whose tuning has a
Gaussian envelope in the preferred direction $\omega$, chosen to minimise the variance of the kernel estimate.

For $\omega \sim N(0, I_d)$ and any $A < 1/8$,

$$f(\omega, x) = (1-4A)^{d/4} \exp\!\big(A|\omega|^2 + \sqrt{1-4A}\,\omega\cdot x - |x|^2/2\big),
  \qquad E_\omega[f(\omega,x) f(\omega,y)] = e^{x\cdot y},$$

and one feature's relative second moment is $E[f^2(\omega,x)f^2(\omega,y)]/e^{2x\cdot y} =
((1-4A)^2/(1-8A))^{d/2}\, e^{s/(1-8A)}$ with $s = |x+y|^2$ (against $e^{s}$ for $A = 0$, which is FAVOR+).
Minimising its logarithm over $A$ gives, with $u = 1 - 8A$, $d u^2 - (d + 2s) u - 2s = 0$:

$$A^*(s) = \frac{1 - u^*}{8}, \qquad u^* = \frac{d + 2s + \sqrt{(d+2s)^2 + 8ds}}{2d}.$$

$A^* \le 0$: a neuron with a long preferred direction $\omega$ fires less ($e^{A|\omega|^2}$), which is what tames
the heavy tail of FAVOR+ for large $s$.

Reference: Likhosherstov, Choromanski, Dubey, Liu, Sarlos & Weller, "Chefs' Random Tables: Non-Trigonometric
Random Features", NeurIPS 2022 (OPRF, FAVOR++).
"""

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._validate import check_int
from ._maps import (
    AbstractFeatureMap,
    _check_sizes,
    _gaussian,
    _maybe_frozen,
    _orthogonal_gaussian,
    check_map_input,
)


def optimal_A(s: float, d: int) -> float:
    r"""The $A$ that minimises one OPRF feature's relative second moment for $s = |x+y|^2$ in dimension $d$:
    $A^* = (1 - u^*)/8$, $u^* = (d + 2s + \sqrt{(d+2s)^2 + 8ds}) / (2d)$. $A^*(0) = 0$ (FAVOR+); $A^* < 0$ for
    $s > 0$."""
    s = float(s)
    if not (math.isfinite(s) and s >= 0):
        raise ValueError(f"s: expected a finite non-negative |x+y|^2, got {s!r}")
    d = check_int("d", d)
    u = (d + 2 * s + math.sqrt((d + 2 * s) ** 2 + 8 * d * s)) / (2 * d)
    return (1.0 - u) / 8.0


def log_relative_second_moment(A, s, d: int):
    r"""$\log\big[((1-4A)^2/(1-8A))^{d/2} e^{s/(1-8A)}\big]$: the log of one OPRF feature's second moment
    divided by $e^{2x\cdot y}$ (A = 0: FAVOR+, $s$). Works elementwise on arrays."""
    A = jnp.asarray(A)
    return 0.5 * d * (2 * jnp.log1p(-4 * A) - jnp.log1p(-8 * A)) + s / (1 - 8 * A)


def fit_A(q: Float[Array, "L D"], k: Float[Array, "L D"], *, causal: bool = True, grid: int = 400) -> float:
    r"""The $A$ that minimises the closed-form variance of the estimated normalisers of one head,

    $$\sum_t \frac{\sum_{\tau} e^{2 q_t\cdot k_\tau}\,(R(A, |q_t+k_\tau|^2) - 1)}{(\sum_\tau e^{q_t\cdot k_\tau})^2},$$

    ($\tau \le t$ if `causal`; $R$ the relative second moment above), over a log-spaced grid of $u = 1 - 8A$
    from 1 to $10^4$. Use it to set `OptimalPositiveRandomFeatures(A=...)` from a head's queries and keys.
    """
    q, k = jnp.asarray(q), jnp.asarray(k)
    if q.ndim != 2 or k.shape != q.shape:
        raise ValueError(f"q, k: expected two (L, D) arrays of one shape, got {q.shape} and {k.shape}")
    return float(_fit_A(q, k, causal, grid))


@functools.partial(jax.jit, static_argnums=(2, 3))
def _fit_A(q, k, causal, grid):
    L, d = q.shape
    logits = q @ k.T
    s = jnp.sum((q[:, None, :] + k[None, :, :]) ** 2, axis=-1)
    allowed = jnp.tril(jnp.ones((L, L), bool)) if causal else jnp.ones((L, L), bool)
    us = jnp.logspace(0.0, 4.0, grid, dtype=q.dtype)
    As = (1.0 - us) / 8.0

    def log_variance(A):
        log_r = log_relative_second_moment(A, s, d)
        log_excess = jnp.where(log_r > 30.0, log_r, jnp.log(jnp.expm1(jnp.maximum(log_r, 1e-30))))
        num = jax.nn.logsumexp(jnp.where(allowed, 2 * logits + log_excess, -jnp.inf), axis=-1)
        den = 2 * jax.nn.logsumexp(jnp.where(allowed, logits, -jnp.inf), axis=-1)
        return jax.nn.logsumexp(num - den)

    values = jax.lax.map(log_variance, As)
    return As[jnp.argmin(values)]


class OptimalPositiveRandomFeatures(AbstractFeatureMap):
    r"""Optimal positive random features (OPRF / FAVOR++, Likhosherstov et al. 2022):

    $$\phi_j(u) = M^{-1/2} (1-4A)^{d/4} \exp\!\big(A|\omega_j|^2 + \sqrt{1-4A}\,\omega_j\cdot u - |u|^2/2\big),
      \qquad \omega_j \sim N(0, I_D),$$

    unbiased for $e^{q\cdot k}$ ($E[\phi(q)\cdot\phi(k)] = e^{q\cdot k}$) for every $A < 1/8$; $A = 0$ is the paper's
    `PositiveRandomFeatures`. As feature neurons: the same exponential tuning around a preferred direction,
    with a gain $(1-4A)^{d/4}e^{A|\omega_j|^2}$ that is smaller for neurons whose preferred direction is long
    ($A < 0$), and a tuning width scaled by $\sqrt{1-4A}$.

    **Arguments:**

    - `in_dim`: D; `num_features`: M.
    - `A`: the parameter, $A < 1/8$; or
    - `s`: a typical $|q+k|^2$ of the data; $A$ is then `optimal_A(s, D)` (closed form). Default when neither
      is given: $s = 2\sqrt{D}$, the value for unit-variance projections scaled by $D^{-1/4}$. For a trained
      head, `fit_A(q, k)` picks $A$ from its queries and keys.
    - `orthogonal`: draw the $\omega_j$ in orthogonal blocks with chi-distributed norms (each $\omega_j$ is still
      $N(0, I_D)$, so the estimate stays unbiased; its variance is lower).
    - `trainable`: if False (default) the $\omega_j$ are frozen; $A$ is never trained (it must stay below 1/8).
    - `key`: PRNG key (keyword-only).

    **Shapes:** (..., D) → (..., M). Rates are positive (they may underflow to 0 for very large |u|).
    """

    W: Float[Array, "M D"]
    A: Float[Array, ""]
    in_dim: int = eqx.field(static=True)
    num_features: int = eqx.field(static=True)
    trainable: bool = eqx.field(static=True)
    nonnegative = True

    def __init__(
        self,
        in_dim: int,
        num_features: int,
        *,
        A: float | None = None,
        s: float | None = None,
        orthogonal: bool = False,
        trainable: bool = False,
        dtype=None,
        key: PRNGKeyArray,
    ):
        in_dim, num_features = _check_sizes(in_dim, num_features)
        if A is not None and s is not None:
            raise ValueError(f"A, s: expected at most one of them, got A={A!r} and s={s!r}")
        if A is None:
            A = optimal_A(2.0 * math.sqrt(in_dim) if s is None else s, in_dim)
        elif not (isinstance(A, (int, float)) and math.isfinite(A) and A < 0.125):
            raise ValueError(f"A: expected a finite number below 1/8, got {A!r}")
        dtype = jnp.result_type(float) if dtype is None else dtype
        self.W = (_orthogonal_gaussian if orthogonal else _gaussian)(key, num_features, in_dim, dtype)
        self.A = jnp.asarray(A, dtype)
        self.in_dim = in_dim
        self.num_features = num_features
        self.trainable = trainable

    def __call__(self, u: Float[Array, "*batch D"]) -> Float[Array, "*batch M"]:
        check_map_input(self, u)
        W = _maybe_frozen(self.W, self.trainable)
        A = jax.lax.stop_gradient(self.A)
        log_gain = 0.25 * self.in_dim * jnp.log1p(-4 * A) + A * jnp.sum(W * W, axis=-1)  # (M,)
        log_phi = (
            log_gain
            + jnp.sqrt(1 - 4 * A) * (u @ W.T)
            - 0.5 * jnp.sum(u * u, axis=-1, keepdims=True)
            - 0.5 * jnp.log(jnp.asarray(self.num_features, u.dtype))
        )
        return jnp.exp(log_phi)
