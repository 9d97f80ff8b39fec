r"""The read phase: a query is read out through the tripartite synapses while the astrocyte divides.

From rest ($h = x = s = 0$), with c and g frozen (model.md §3):

    tau_n dh/dt = -h + phi(q)
    tau_n dx/dt = -x + sum_j s_ij h_j
    tau_s ds_ij/dt = -p_ij s_ij + c_ij
    tau_p dp_ij/dt = sum_kl (p_kl - p_ij),      p_ij(0) = phi_j(q) g_j

Every solve runs in read time $u = t / T_r \in [0, 1]$ so that $T_r$ is an ordinary (differentiable) parameter.

Two implementations, proven equal in the tests:

- `FullReadField`: the literal N×M state (h, x, s, p).
- `ReducedReadField`: the exact reduction. With all-to-all diffusion $p_{ij}(t) = p_j(t)$ in closed form,
  $s_{ij} = c_{ij}\sigma_j$ and $x = c\,z$ with

      tau_s dsigma_j/dt = 1 - p_j(t) sigma_j,          sigma(0) = 0
      tau_n dz_j/dt     = -z_j + h_j(t) sigma_j,        z(0) = 0,    h_j(t) = phi_j(q)(1 - e^{-t/tau_n})

  an O(M) linear system per query. `Magnus2` integrates it exactly whenever its coefficients are constant,
  which makes it unconditionally stable however stiff $p/\tau_s$ and $NM/\tau_p$ are.
"""

from typing import ClassVar

import diffrax
import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._astrocyte import calcium_rhs, calcium_window_mean
from ._neurons import feature_neurons_rhs, output_neurons_rhs
from ._params import NAParams
from ._special import magnus_exponentials, psi
from ._synapse import efficacy_rhs


class FullReadField(eqx.Module):
    """Literal read vector field in read time, state (h (M,), x (N,), s (N, M), p (N, M)); args (phi_q, c)."""

    params: NAParams

    def __call__(self, u, y, args):
        h, x, s, p = y
        phi_q, c = args
        prm = self.params
        dh = feature_neurons_rhs(h, phi_q, prm.tau_n)
        dx = output_neurons_rhs(x, s @ h, prm.tau_n)
        ds = efficacy_rhs(s, p, c, prm.tau_s)
        dp = calcium_rhs(p, prm.tau_p)
        return tuple(prm.t_read * d for d in (dh, dx, ds, dp))


class ReducedReadField(eqx.Module):
    r"""Reduced read vector field for a batch of queries, state $(\sigma, z)$, each (..., M), in read time.

    **Fields:** `phi_q` $\phi(q)$ (..., M); `p0` initial calcium $\phi_j(q) g_j$ (..., M); `p_bar` its mean
    (..., 1); `rate` $\kappa = NM/\tau_p$; and the `params`.
    """

    phi_q: Float[Array, "*b M"]
    p0: Float[Array, "*b M"]
    p_bar: Float[Array, "*b 1"]
    rate: Float[ArrayLike, ""]
    params: NAParams

    def calcium(self, t):
        return self.p_bar + (self.p0 - self.p_bar) * jnp.exp(-self.rate * t)

    def feature_rates(self, t):
        return self.phi_q * -jnp.expm1(-t / self.params.tau_n)

    def __call__(self, u, y, args):
        sigma, z = y
        prm = self.params
        t = u * prm.t_read
        dsigma = (1.0 - self.calcium(t) * sigma) / prm.tau_s
        dz = (self.feature_rates(t) * sigma - z) / prm.tau_n
        return prm.t_read * dsigma, prm.t_read * dz

    def linear_coefficients(self, u0, u1):
        r"""Step-averaged coefficients of $\dot\sigma = f - a\sigma$, $\dot z = b\sigma - d z$ over $[u_0, u_1]$
        (read time), each exact: returns `(a, b, d, f)`."""
        prm = self.params
        T = prm.t_read
        t0, dt = u0 * T, (u1 - u0) * T
        p_avg = calcium_window_mean(self.p0, self.p_bar, self.rate, t0, dt)
        h_avg = self.phi_q * (1.0 - jnp.exp(-t0 / prm.tau_n) * psi(dt / prm.tau_n))
        return T * p_avg / prm.tau_s, T * h_avg / prm.tau_n, T / prm.tau_n, T / prm.tau_s


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
        field = _unwrap(terms).vector_field
        sigma0, z0 = y0
        a, b, d, f = field.linear_coefficients(t0, t1)
        dt = t1 - t0
        alpha, beta = a * dt, d * dt
        e_alpha, psi_alpha, e1, e2 = magnus_exponentials(alpha, beta)
        sigma1 = e_alpha * sigma0 + f * dt * psi_alpha
        z1 = jnp.exp(-beta) * z0 + b * dt * (sigma0 * e1 + f * dt * e2)
        y1 = (sigma1, z1)
        return y1, None, dict(y0=y0, y1=y1), None, diffrax.RESULTS.successful

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)


def _unwrap(term, expected: str = "Magnus2: expected an ODETerm over a field with `linear_coefficients`"):
    """The `diffrax.ODETerm` inside the wrappers diffrax puts around a solver's terms."""
    while not isinstance(term, diffrax.ODETerm):
        if not hasattr(term, "term"):
            raise TypeError(f"{expected}, got {term!r}")
        term = term.term
    return term


def read_grid(params: NAParams, N: int, M: int, steps: int, dtype) -> Float[Array, " steps+1"]:
    r"""Geometric step grid in read time: the first step resolves the fastest transient
    $\min(\tau_n, \tau_p/NM)$, later steps grow geometrically up to $T_r$ (where Magnus2 is exact)."""
    fastest = jnp.minimum(params.tau_n, params.tau_p / (N * M)) / (4 * params.t_read)
    u1 = jnp.minimum(fastest, 1.0 / steps).astype(dtype)
    k = jnp.arange(steps, dtype=dtype) / max(steps - 1, 1)
    grid = u1 ** (1.0 - k)  # u1 ... 1, geometric
    # Pin the end to exactly 1 (diffrax's StepTo requires ts[-1] == t1): under jit with traced parameters,
    # XLA may round k[-1] or the power so that the last point lands an ulp away from 1.
    grid = grid.at[-1].set(1.0)
    return jnp.concatenate([jnp.zeros(1, dtype), grid])
