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
    Taylor series $\sum_n (-1)^n h_n(x, y) / (n+2)!$ when $hi < 0.1$ (truncation below an ulp).
    """
    return magnus_exponentials(x, y)[3]


def _series_terms(dtype, float32_terms: int, float64_terms: int) -> int:
    """Terms of a series in $x < 1/2$ that reach the dtype's precision (the truncation below an ulp)."""
    return float32_terms if jnp.finfo(dtype).bits <= 32 else float64_terms


def _psi_given_exp(x, e_x):
    r"""$\psi(x) = (1 - e^{-x})/x$ from `e_x` $= e^{-x}$, so that no second transcendental is evaluated:
    the quotient where $|x| \ge 1/2$ (there $1 - e^{-x} \ge 0.39$ does not cancel), the Taylor series
    $\sum_n (-x)^n / (n+1)!$ below (to an ulp: 8 terms in float32, 15 in float64)."""
    small = jnp.abs(x) < 0.5
    x_safe = jnp.where(small, 1.0, x)
    xs = jnp.where(small, x, 0.0)
    terms = _series_terms(xs.dtype, 8, 15)
    series = jnp.full_like(xs, (-1) ** (terms - 1) / math.factorial(terms))
    for n in range(terms - 2, -1, -1):
        series = series * xs + (-1) ** n / math.factorial(n + 1)
    return jnp.where(small, series, (1.0 - e_x) / x_safe)


def _sorted_nodes(alpha, beta):
    """The nodes of `magnus_exponentials` sorted, and the guards of its Taylor branch (where hi < 0.1):
    `(alpha_lo, lo, hi, small, hi_safe, x, y)`, with `x` = alpha where `small` (0 elsewhere) and `y` = beta
    where beta < 0.1 (0 elsewhere), the latter of beta's own shape (a per-step scalar in the read)."""
    # Selected (not min/max) so that at ties the derivative is attributed consistently.
    alpha_lo = alpha <= beta
    lo = jnp.where(alpha_lo, alpha, beta)
    hi = jnp.where(alpha_lo, beta, alpha)
    small = hi < 0.1
    hi_safe = jnp.where(small, 1.0, hi)
    x = jnp.where(small, alpha, 0.0)  # guarded: x^5 overflows for large x, and inf * 0 is NaN in the backward
    y = jnp.where(beta < 0.1, beta, 0.0)
    return alpha_lo, lo, hi, small, hi_safe, x, y


def _coefficients_in_y(y, top: int, first: int):
    r"""$C_i(y) = \sum_{n=i}^{top} (-1)^n y^{n-i} / (n+2)!$ for $i = first, \dots, top$, on `y`'s shape: with
    $h_n(x, y) = \sum_{i \le n} x^i y^{n-i}$, $\sum_{n \le top} (-1)^n h_n(x, y) / (n+2)! = \sum_i x^i C_i(y)$.
    `y` is the read's per-step $\beta$, so the per-element work of the series is one polynomial in $x$. One
    Horner pass from the top: $C_{top} = (-1)^{top}/(top+2)!$, $C_i = (-1)^i/(i+2)! + y\,C_{i+1}$."""
    c = jnp.full_like(y, (-1) ** top / math.factorial(top + 2))
    out = [c]
    for i in range(top - 1, first - 1, -1):
        c = c * y + (-1) ** i / math.factorial(i + 2)
        out.append(c)
    return out[::-1]


def _exponentials(alpha, beta):
    """`magnus_exponentials`' values and what its slopes reuse: `(values, (e_b, psi_b, alpha_lo, small, hi_safe,
    x, y, delta, e_d, psi_d))`."""
    alpha = jnp.asarray(alpha)
    beta = jnp.asarray(beta)
    e_a = jnp.exp(-alpha)  # the one transcendental per element
    psi_a = _psi_given_exp(alpha, e_a)
    e_b = jnp.exp(-beta)  # beta's functions on its own (lower-rank) shape
    psi_b = _psi_given_exp(beta, e_b)
    alpha_lo, lo, hi, small, hi_safe, x, y = _sorted_nodes(alpha, beta)
    e_lo = jnp.where(alpha_lo, e_a, e_b)
    # e^{-(hi - lo)} = e^{-hi} / e^{-lo}. Where e^{-lo} is below the square root of the smallest normal number
    # (lo > 43.7 in float32, 354 in float64), the quotient's derivative would overflow; there E_1 = e^{-lo}
    # psi(hi - lo) < e^{-lo} is negligible beside E_2 >= psi(lo)/hi, and e^{-(hi - lo)} is taken as 0.
    kept = e_lo >= math.sqrt(jnp.finfo(e_lo.dtype).tiny)
    e_d = jnp.where(kept, jnp.where(alpha_lo, e_b, e_a) / jnp.where(kept, e_lo, 1.0), 0.0)
    delta = hi - lo
    psi_d = _psi_given_exp(delta, e_d)
    # E_1 = e^{-lo} psi(hi - lo)   (exp_mean2)
    e1 = e_lo * psi_d
    # E_2 = (psi(lo) - E_1(lo, hi)) / hi, or its Taylor series sum_{n <= top} (-1)^n h_n / (n+2)! when hi < 0.1
    # (top 5 in float32, 9 in float64: truncation below an ulp)
    exact = (jnp.where(alpha_lo, psi_a, psi_b) - e1) / hi_safe
    coefficients = _coefficients_in_y(y, _series_terms(y.dtype, 5, 9), 0)
    series = coefficients[-1]
    for c in coefficients[-2::-1]:
        series = series * x + c
    values = (e_a, psi_a, e1, jnp.where(small, series, exact))
    return values, (e_b, psi_b, alpha_lo, small, hi_safe, x, y, delta, e_d, psi_d)


def magnus_exponentials(
    alpha: Float[ArrayLike, "*shape"], beta: Float[ArrayLike, "*b"]
) -> tuple[Float[Array, "*shape"], Float[Array, "*shape"], Float[Array, "*shape"], Float[Array, "*shape"]]:
    r"""$(e^{-\alpha}, \psi(\alpha), E_1(\alpha, \beta), E_2(\alpha, \beta))$ in one pass, for $\alpha, \beta \ge 0$.

    The same values as `jnp.exp(-alpha)`, `psi(alpha)`, `exp_mean2(alpha, beta)` and `exp_mean3(alpha, beta)`
    (to rounding), with one transcendental evaluation per element of `alpha`: $\psi(\alpha)$ and
    $\psi(|\alpha - \beta|)$ are taken from $e^{-\alpha}$ and $e^{-|\alpha - \beta|} = e^{-hi}/e^{-lo}$
    (`_psi_given_exp`; a Taylor series below 1/2), and $E_2$'s Taylor branch is a polynomial in $\alpha$ whose
    coefficients are functions of $\beta$. `beta` may be of lower rank than `alpha` (e.g. a scalar, as in the
    read); its functions are evaluated on its own shape, before broadcasting. Used by `Magnus2`, whose step needs
    all four at $\alpha = a\,\Delta t$, $\beta = d\,\Delta t$. (On the default train step, against one `exp`
    and two `expm1` per element and the series formed per element: 6-9 ms of 45-48 ms faster, docs/performance.md.)
    """
    return _exponentials(alpha, beta)[0]


def _psi_slope_given_exp(x, psi_x, e_x):
    r"""$\psi'(x) = (e^{-x} - \psi(x))/x = -\int_0^1 w\,e^{-xw}\,dw$ from `psi_x` $= \psi(x)$ and
    `e_x` $= e^{-x}$: the quotient where $|x| \ge 1/2$, the Taylor series $\sum_{n \ge 1} (-1)^n n x^{n-1}/(n+1)!$
    below, where the difference cancels (to an ulp: 8 terms in float32, 16 in float64). (Differentiating `psi`'s
    formula instead cancels already at $x = 10^{-4}$: in float32, relative errors up to $10^{-3}$. $e^{-x}$ is
    not taken as $1 - x\psi(x)$, which cancels for large $x$.)"""
    small = jnp.abs(x) < 0.5
    x_safe = jnp.where(small, 1.0, x)
    xs = jnp.where(small, x, 0.0)
    terms = _series_terms(xs.dtype, 8, 16)
    series = jnp.full_like(xs, (-1) ** terms * terms / math.factorial(terms + 1))
    for n in range(terms - 1, 0, -1):
        series = series * xs + (-1) ** n * n / math.factorial(n + 1)
    return jnp.where(small, series, (e_x - psi_x) / x_safe)


def magnus_exponentials_and_slopes(
    alpha: Float[ArrayLike, "*shape"], beta: Float[ArrayLike, "*b"]
) -> tuple[tuple[Float[Array, "*shape"], ...], tuple[Float[Array, "*shape"], ...], tuple[Float[Array, "*shape"], ...]]:
    r"""`magnus_exponentials(alpha, beta)`, its derivatives in $\alpha$ and those of $E_1$ and $E_2$ in $\beta$
    (the other two values do not depend on it), for $\alpha, \beta \ge 0$: returns
    $((e^{-\alpha}, \psi(\alpha), E_1, E_2), (-e^{-\alpha}, \psi'(\alpha), \partial_\alpha E_1, \partial_\alpha E_2),
    (\partial_\beta E_1, \partial_\beta E_2))$.

    With the sorted nodes $lo \le hi$ and $\delta = hi - lo$ (as in `magnus_exponentials`):

        dE_1/dalpha = -e^{-alpha} (psi(delta) + psi'(delta))     if alpha <= beta   (E_1 = e^{-alpha} psi(beta - alpha))
                    =  e^{-beta} psi'(delta)                     otherwise          (E_1 = e^{-beta} psi(alpha - beta))
        dE_2/dalpha = (psi'(alpha) - dE_1/dalpha) / beta         if alpha <= beta   (E_2 = (psi(alpha) - E_1) / beta)
                    = -(dE_1/dalpha + E_2) / alpha               otherwise          (E_2 = (psi(beta) - E_1) / alpha)

    and, where $hi < 0.1$, the derivative of $E_2$'s Taylor series $\sum_n (-1)^n h_n(\alpha, \beta)/(n+2)!$ (to
    $n = 8$ in float32, 12 in float64). $E_1$ and $E_2$ are divided differences of $e^{-u}$ on the nodes
    $(\alpha, \beta)$ and $(0, \alpha, \beta)$, symmetric in $\alpha$ and $\beta$, so their $\beta$-slopes are the
    same forms with the two nodes' roles exchanged:

        dE_1/dbeta = e^{-alpha} psi'(delta)                      if alpha <= beta
                   = -e^{-beta} (psi(delta) + psi'(delta))       otherwise
        dE_2/dbeta = -(dE_1/dbeta + E_2) / beta                  if alpha <= beta
                   = (psi'(beta) - dE_1/dbeta) / alpha           otherwise

    and, where $hi < 0.1$, the series $\sum_i \alpha^i C_i'(\beta)$ (`_coefficients_in_y` differentiated, on
    $\beta$'s own shape). Written out so that the read's reverse sweep is a handful of fused elementwise kernels
    (autodiff of the stable forms produced about three times as many, each a pass over memory), and more accurate
    than autodiff of those forms, which cancels near their branch points. The $\beta$-slopes serve the cotangents
    of the read's per-step scalars (fitting the time constants); unused, as in training, XLA does not compute them.
    """
    values, (e_b, psi_b, alpha_lo, small, hi_safe, x, y, delta, e_d, psi_d) = _exponentials(alpha, beta)
    e_a, psi_a, _, e2 = values
    dpsi_d = _psi_slope_given_exp(delta, psi_d, e_d)
    dpsi_a = _psi_slope_given_exp(jnp.asarray(alpha), psi_a, e_a)
    de1 = jnp.where(alpha_lo, -e_a * (psi_d + dpsi_d), e_b * dpsi_d)
    de2 = jnp.where(alpha_lo, dpsi_a - de1, -(de1 + e2)) / hi_safe
    # d/dalpha of the series sum_{n <= top} (-1)^n h_n / (n+2)! = sum_{i >= 1} i x^(i-1) C_i(beta) (top 8 in
    # float32, 12 in float64: truncation below an ulp)
    top = _series_terms(y.dtype, 8, 12)
    coefficients = _coefficients_in_y(y, top, 0)
    de2_series = top * coefficients[-1]
    for i in range(top - 1, 0, -1):
        de2_series = de2_series * x + i * coefficients[i]
    dpsi_b = _psi_slope_given_exp(jnp.asarray(beta), psi_b, e_b)
    de1_b = jnp.where(alpha_lo, e_a * dpsi_d, -e_b * (psi_d + dpsi_d))
    de2_b = jnp.where(alpha_lo, -(de1_b + e2), dpsi_b - de1_b) / hi_safe
    # d/dbeta of the series sum_i x^i C_i(y): C_i' = C_{i+1} + y C_{i+1}' from C_i = c_i + y C_{i+1} (C_top' = 0)
    slopes_in_y = [jnp.zeros_like(y)]
    for i in range(top - 1, -1, -1):
        slopes_in_y.append(coefficients[i + 1] + y * slopes_in_y[-1])
    slopes_in_y = slopes_in_y[::-1]  # C_0', ..., C_top'
    de2_b_series = slopes_in_y[top - 1]
    for i in range(top - 2, -1, -1):
        de2_b_series = de2_b_series * x + slopes_in_y[i]
    alpha_slopes = (-e_a, dpsi_a, de1, jnp.where(small, de2_series, de2))
    return values, alpha_slopes, (de1_b, jnp.where(small, de2_b_series, de2_b))
