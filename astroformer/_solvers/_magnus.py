r"""`Magnus2`: a second-order Magnus (exponential) integrator for the reduced read's linear system

    dsigma/dt = f - a(t) sigma,        dz/dt = b(t) sigma - d z,

whose vector field provides its step-averaged coefficients (`linear_coefficients(t0, t1)`, as
`astroformer._head._read.ReducedReadField` does).
"""

from typing import ClassVar

import diffrax
import jax.numpy as jnp

from ._special import magnus_exponentials


class Magnus2(diffrax.AbstractSolver):
    r"""Second-order Magnus (exponential) integrator for the reduced read
    $\dot\sigma = f - a(t)\sigma,\ \dot z = b(t)\sigma - d\,z$.

    Over each step the coefficients are replaced by their exact averages (the first term of the Magnus
    expansion, $\Omega_1 = \int A$) and the resulting constant-coefficient system is solved exactly with
    stable divided differences of $e^{-x}$. Local error $O(\Delta t^3)$ from the variation of the
    coefficients only: it is exact once calcium and feature neurons have settled, and stable for any step
    and any stiffness. The vector field must provide `linear_coefficients(t0, t1)` (as `ReducedReadField`
    does); use a generic diffrax solver for other fields.

    References: Magnus (1954); Blanes, Casas, Oteo & Ros, "The Magnus expansion and some of its
    applications", Phys. Rep. 470 (2009); Hochbruck & Ostermann, "Exponential integrators", Acta Numerica
    (2010).
    """

    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar = diffrax.LocalLinearInterpolation

    def order(self, terms):
        return 2

    def init(self, terms, t0, t1, y0, args):
        return None

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del solver_state, made_jump
        field = unwrap_term(terms).vector_field
        y1 = magnus_update(field.linear_coefficients(t0, t1), t1 - t0, y0)
        return y1, None, dict(y0=y0, y1=y1), None, diffrax.RESULTS.successful

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)


def magnus_update(coefficients, dt, y0):
    r"""One `Magnus2` step of $\dot\sigma = f - a\sigma$, $\dot z = b\sigma - d z$ with the step-averaged
    `coefficients` $(a, b, d, f)$ held constant over `dt`, solved exactly: returns $(\sigma_1, z_1)$."""
    a, b, d, f = coefficients
    sigma0, z0 = y0
    alpha, beta = a * dt, d * dt
    e_alpha, psi_alpha, e1, e2 = magnus_exponentials(alpha, beta)
    sigma1 = e_alpha * sigma0 + f * dt * psi_alpha
    z1 = jnp.exp(-beta) * z0 + b * dt * (sigma0 * e1 + f * dt * e2)
    return sigma1, z1


def unwrap_term(term, expected: str = "Magnus2: expected an ODETerm over a field with `linear_coefficients`"):
    """The `diffrax.ODETerm` inside the wrappers diffrax puts around a solver's terms."""
    while not isinstance(term, diffrax.ODETerm):
        if not hasattr(term, "term"):
            raise TypeError(f"{expected}, got {term!r}")
        term = term.term
    return term
