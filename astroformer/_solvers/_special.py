"""Numerically stable exponential integrals used by the exact (exponential) integrators.

All functions are elementwise, finite for every finite non-negative input, and have finite gradients
everywhere (the "double-where" trick guards the removable singularities).
"""

import math

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


def _sorted_nodes(alpha, beta):
    """The nodes of `magnus_exponentials` sorted, and the guards of its Taylor branch (where hi < 0.1):
    `(alpha_lo, lo, hi, small, hi_safe, x, y)`, with `x, y` the nodes where `small` and 0 elsewhere."""
    # Selected (not min/max) so that at ties the derivative is attributed consistently.
    alpha_lo = alpha <= beta
    lo = jnp.where(alpha_lo, alpha, beta)
    hi = jnp.where(alpha_lo, beta, alpha)
    small = hi < 0.1
    hi_safe = jnp.where(small, 1.0, hi)
    x = jnp.where(small, alpha, 0.0)  # guarded: x^5 overflows for large x, and inf * 0 is NaN in the backward
    y = jnp.where(small, beta, 0.0)
    return alpha_lo, lo, hi, small, hi_safe, x, y


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
    alpha_lo, lo, hi, small, hi_safe, x, y = _sorted_nodes(alpha, beta)
    # E_1 = e^{-lo} psi(hi - lo)   (exp_mean2)
    e1 = jnp.where(alpha_lo, e_a, e_b) * psi(hi - lo)
    # E_2 = (psi(lo) - E_1(lo, hi)) / hi, or its Taylor series when hi < 0.1   (exp_mean3)
    exact = (jnp.where(alpha_lo, psi_a, psi_b) - e1) / hi_safe
    h1 = x + y
    h2 = x * x + x * y + y * y
    h3 = h2 * x + y**3
    h4 = h3 * x + y**4
    h5 = h4 * x + y**5
    series = 1 / 2 - h1 / 6 + h2 / 24 - h3 / 120 + h4 / 720 - h5 / 5040
    return e_a, psi_a, e1, jnp.where(small, series, exact)


# psi'(x) = sum_{n >= 1} (-1)^n n x^(n-1) / (n+1)!, to x^8: truncation below 3e-14 relative for x < 0.1.
_PSI_SLOPE_SERIES = tuple((-1) ** n * n / math.factorial(n + 1) for n in range(1, 10))


def psi_slope(x: Float[ArrayLike, "*shape"], psi_x: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
    r"""$\psi'(x) = (e^{-x} - \psi(x))/x = -\int_0^1 w\,e^{-xw}\,dw$ for $x \ge 0$ (not for negative $x$),
    given `psi_x` $= \psi(x)$.

    The Taylor series below $x = 0.1$, where the difference cancels. (Differentiating `psi`'s formula instead
    cancels already at $x = 10^{-4}$: in float32, relative errors up to $10^{-3}$. $e^{-x}$ is evaluated, not
    taken as $1 - x\psi(x)$, which cancels for large $x$.)
    """
    x = jnp.asarray(x)
    small = x < 0.1
    x_safe = jnp.where(small, 1.0, x)
    exact = (jnp.exp(-x) - psi_x) / x_safe  # e^{-x} <= 1 for x >= 0: finite in either branch
    xs = jnp.where(small, x, 0.0)
    series = _PSI_SLOPE_SERIES[-1]
    for coefficient in _PSI_SLOPE_SERIES[-2::-1]:
        series = series * xs + coefficient
    return jnp.where(small, series, exact)


def magnus_exponentials_and_slopes(
    alpha: Float[ArrayLike, "*shape"], beta: Float[ArrayLike, "*b"]
) -> tuple[tuple[Float[Array, "*shape"], ...], tuple[Float[Array, "*shape"], ...]]:
    r"""`magnus_exponentials(alpha, beta)` and its derivatives in $\alpha$, for $\alpha, \beta \ge 0$: returns
    $((e^{-\alpha}, \psi(\alpha), E_1, E_2), (-e^{-\alpha}, \psi'(\alpha), \partial_\alpha E_1, \partial_\alpha E_2))$.

    With the sorted nodes $lo \le hi$ and $\delta = hi - lo$ (as in `magnus_exponentials`):

        dE_1/dalpha = -e^{-alpha} (psi(delta) + psi'(delta))     if alpha <= beta   (E_1 = e^{-alpha} psi(beta - alpha))
                    =  e^{-beta} psi'(delta)                     otherwise          (E_1 = e^{-beta} psi(alpha - beta))
        dE_2/dalpha = (psi'(alpha) - dE_1/dalpha) / beta         if alpha <= beta   (E_2 = (psi(alpha) - E_1) / beta)
                    = -(dE_1/dalpha + E_2) / alpha               otherwise          (E_2 = (psi(beta) - E_1) / alpha)

    and, where $hi < 0.1$, the derivative of $E_2$'s Taylor series $\sum_n (-1)^n h_n(\alpha, \beta)/(n+2)!$ (to
    $n = 8$). Written out so that the read's reverse sweep is a handful of fused elementwise kernels (autodiff of
    the stable forms produced about three times as many, each a pass over memory), and more accurate than
    autodiff of those forms, which cancels near their branch points.
    """
    alpha = jnp.asarray(alpha)
    beta = jnp.asarray(beta)
    values = magnus_exponentials(alpha, beta)
    e_a, psi_a, _, e2 = values
    e_b = jnp.exp(-beta)
    alpha_lo, lo, hi, small, hi_safe, x, y = _sorted_nodes(alpha, beta)
    psi_d = psi(hi - lo)
    dpsi_d = psi_slope(hi - lo, psi_d)
    dpsi_a = psi_slope(alpha, psi_a)
    de1 = jnp.where(alpha_lo, -e_a * (psi_d + dpsi_d), e_b * dpsi_d)
    de2 = jnp.where(alpha_lo, dpsi_a - de1, -(de1 + e2)) / hi_safe
    h, dh = x + y, jnp.ones_like(x)  # h_n(x, y) = h_{n-1} x + y^n and its derivative in x
    de2_series = -dh / 6
    for n in range(2, 9):
        h, dh = h * x + y**n, dh * x + h
        de2_series = de2_series + (-1) ** n * dh / math.factorial(n + 2)
    return values, (-e_a, dpsi_a, de1, jnp.where(small, de2_series, de2))
