"""Numerically stable exponential integrals used by the exact (exponential) integrators.

All functions are elementwise, finite for every finite non-negative input, and have finite gradients
everywhere (the "double-where" trick guards the removable singularities).
"""

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float


def psi(x: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
    r"""$\psi(x) = (1 - e^{-x}) / x = \int_0^1 e^{-x w}\,dw$, with $\psi(0) = 1$.

    Stable for every real `x` (for large negative `x` it overflows only where the true value does).
    """
    x = jnp.asarray(x)
    small = jnp.abs(x) < 1e-4
    x_safe = jnp.where(small, 1.0, x)
    x_small = jnp.where(small, x, 0.0)  # the series never sees a huge x (inf * 0 = NaN in the backward pass)
    series = 1.0 - x_small / 2 + x_small * x_small / 6
    return jnp.where(small, series, -jnp.expm1(-x_safe) / x_safe)


def exp_mean2(x: Float[ArrayLike, "*shape"], y: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
    r"""$E_1(x, y) = \int_0^1 e^{-(1-w) x - w y}\,dw = (e^{-x} - e^{-y}) / (y - x)$ for $x, y \ge 0$.

    Written as $e^{-\min(x,y)}\,\psi(|x - y|)$, which never cancels catastrophically.
    This is minus the first divided difference of $e^{-u}$ on the nodes $x, y$.
    """
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    return jnp.exp(-jnp.minimum(x, y)) * psi(jnp.abs(x - y))


def exp_mean3(x: Float[ArrayLike, "*shape"], y: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
    r"""$E_2(x, y) = \iint_{0 \le a \le b \le 1} e^{-(b - a) x - (1 - b) y}\,da\,db$ for $x, y \ge 0$.

    The second divided difference of $e^{-u}$ on the nodes $(0, x, y)$ (Hermite–Genocchi). Equals $1/2$ at
    $x = y = 0$. Computed as $(E_1(0, lo) - E_1(lo, hi)) / hi$ with $lo, hi$ the sorted nodes, and by its
    Taylor series $\sum_n (-1)^n h_n(x, y) / (n+2)!$ when $hi < 0.1$ (truncation error below $10^{-10}$).
    """
    return magnus_exponentials(x, y)[3]


def magnus_exponentials(
    alpha: Float[ArrayLike, "*shape"], beta: Float[ArrayLike, "*b"]
) -> tuple[Float[Array, "*shape"], Float[Array, "*shape"], Float[Array, "*shape"], Float[Array, "*shape"]]:
    r"""$(e^{-\alpha}, \psi(\alpha), E_1(\alpha, \beta), E_2(\alpha, \beta))$ in one pass, for $\alpha, \beta \ge 0$.

    The same values as `jnp.exp(-alpha)`, `psi(alpha)`, `exp_mean2(alpha, beta)` and `exp_mean3(alpha, beta)`,
    with the exponentials shared between them: three transcendental evaluations per element instead of
    seven. `beta` may be of lower rank than `alpha` (e.g. a scalar); its functions are evaluated before
    broadcasting. Used by `Magnus2`, whose step needs all four at $\alpha = a\,\Delta t$, $\beta = d\,\Delta t$.
    """
    alpha = jnp.asarray(alpha)
    beta = jnp.asarray(beta)
    e_a = jnp.exp(-alpha)
    psi_a = psi(alpha)
    e_b = jnp.exp(-beta)
    psi_b = psi(beta)
    # Sorted nodes, selected (not min/max) so that at ties the derivative is attributed consistently.
    alpha_lo = alpha <= beta
    lo = jnp.where(alpha_lo, alpha, beta)
    hi = jnp.where(alpha_lo, beta, alpha)
    # E_1 = e^{-lo} psi(hi - lo)   (exp_mean2)
    e1 = jnp.where(alpha_lo, e_a, e_b) * psi(hi - lo)
    # E_2 = (psi(lo) - E_1(lo, hi)) / hi, or its Taylor series when hi < 0.1   (exp_mean3)
    small = hi < 0.1
    hi_safe = jnp.where(small, 1.0, hi)
    exact = (jnp.where(alpha_lo, psi_a, psi_b) - e1) / hi_safe
    x = jnp.where(small, alpha, 0.0)  # guarded: x^5 overflows for large x, and inf * 0 is NaN in the backward
    y = jnp.where(small, beta, 0.0)
    h1 = x + y
    h2 = x * x + x * y + y * y
    h3 = h2 * x + y**3
    h4 = h3 * x + y**4
    h5 = h4 * x + y**5
    series = 1 / 2 - h1 / 6 + h2 / 24 - h3 / 120 + h4 / 720 - h5 / 5040
    return e_a, psi_a, e1, jnp.where(small, series, exact)
