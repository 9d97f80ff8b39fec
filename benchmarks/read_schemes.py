"""Accuracy of the reduced read's fixed-step schemes, per regime of the time constants and per number of steps:
the default (`Magnus2` on the geometric `read_grid`) against two alternatives that were tried and not adopted,
`Magnus2` on a graded grid and a fourth-order Magnus step on the default grid.

Each case is one head's reduced read (`ReducedReadField`, the abstract astrocyte; its end value $z(T_r)$ is
what the head reads out), for L queries against astrocyte weights written by L keys. The error is the relative
(Frobenius) error of $z(T_r)$ over queries and features, in float64 (the schemes' truncation error, not float32
rounding), against the same field solved by `Tsit5` with `PIDController(rtol=1e-12, atol=1e-14)`.

The alternatives:

- graded grid: $u_k = (k/S)^\\gamma$ with $\\gamma = \\max(1, \\log u_1 / \\log(1/S))$, the same first step $u_1$
  as the geometric grid (a quarter of the fastest transient) but shorter late steps;
- `Magnus4`: the fourth-order Magnus step with two Gauss–Legendre nodes (Blanes, Casas, Oteo & Ros 2009),
  $\\Omega = \\tfrac h2 (A_1 + A_2) + \\tfrac{\\sqrt3 h^2}{12}[A_2, A_1]$ on the augmented system
  $(\\sigma, z, 1)$. For $\\dot\\sigma = f - a\\sigma$, $\\dot z = b\\sigma - d z$ the commutator keeps the system lower
  triangular, so the step is `Magnus2`'s closed form with corrected coefficients plus a constant drive on z.

    python -m benchmarks.read_schemes [--quick] [--out PATH]
"""

import argparse
import math

import jax

jax.config.update("jax_enable_x64", True)  # a script, not the library: the float64 reference needs it

import diffrax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from astroformer import NAParams, PositiveRandomFeatures  # noqa: E402
from astroformer._head._block import _read_field  # noqa: E402
from astroformer._head._equations import feature_rise  # noqa: E402
from astroformer._head._read import read_grid, solve_read  # noqa: E402
from astroformer._solvers._special import magnus_exponentials, psi  # noqa: E402

from ._common import machine_info, pyplot, write_json  # noqa: E402


def graded_grid(params: NAParams, N: int, M: int, steps: int, dtype):
    """$u_k = (k/S)^\\gamma$, $k = 0..S$, first step $u_1 = \\min(\\tau_n, \\tau_p/NM)/(4T_r)$ (or uniform)."""
    fastest = (jnp.minimum(params.tau_n, params.tau_p / (N * M)) / (4 * params.t_read)).astype(dtype)
    gamma = jnp.maximum(1.0, jnp.log(fastest) / math.log(1.0 / max(steps, 2)))
    grid = ((jnp.arange(1, steps + 1, dtype=dtype) / steps) ** gamma).at[-1].set(1.0)
    return jnp.concatenate([jnp.zeros(1, dtype), grid])


def magnus4_read(field, grid):
    """$z(T_r)$ by the fourth-order (Gauss) Magnus step on `grid` (read time)."""
    prm = field.params
    T = prm.t_read
    f, d = T / prm.tau_s, T / prm.tau_n
    sigma = z = jnp.zeros_like(field.phi_q)
    for u0, u1 in zip(grid[:-1], grid[1:]):
        h = u1 - u0
        nodes = [u0 + h * (0.5 + s * math.sqrt(3.0) / 6) for s in (-1.0, 1.0)]
        a1, a2 = (h * f * field.source.rate(u) for u in nodes)
        b1, b2 = (h * d * feature_rise(field.phi_q, u * T, prm.tau_n) for u in nodes)
        c, beta = h * f, h * d
        w = math.sqrt(3.0) / 12
        alpha = (a1 + a2) / 2
        F = c + w * c * (a1 - a2)
        B = (b1 + b2) / 2 + w * ((a2 - beta) * b1 - (a1 - beta) * b2)
        G = w * c * (b2 - b1)
        e_a, psi_a, e1, e2 = magnus_exponentials(alpha, beta)
        sigma, z = e_a * sigma + F * psi_a, jnp.exp(-beta) * z + B * (sigma * e1 + F * e2) + G * psi(beta)
    return z


SCHEMES = {
    "Magnus2, geometric grid (default)": lambda field, p, N, M, S: solve_read(
        field, read_grid(p, N, M, S, jnp.float64)
    )[1],
    "Magnus2, graded grid": lambda field, p, N, M, S: solve_read(field, graded_grid(p, N, M, S, jnp.float64))[1],
    "Magnus4 (Gauss), geometric grid": lambda field, p, N, M, S: magnus4_read(
        field, read_grid(p, N, M, S, jnp.float64)
    ),
}


def cases(quick: bool):
    """(name, N, M, NAParams keyword arguments, scale of the astrocyte weights g)."""
    layer = dict(tau_s=0.01 / 64)
    out = [
        ("layer default (N=32, M=64)", 32, 64, layer, 1.0),
        ("training default head (N=16, M=32)", 16, 32, dict(tau_s=0.01 / 32), 1.0),
        ("training head, weak calcium (g x 1e-3)", 16, 32, dict(tau_s=0.01 / 32), 1e-3),
        ("read window T_r = 0.02", 32, 64, dict(layer, t_read=0.02), 1.0),
        ("tau_n = tau_s = 0.1 T_r", 32, 64, dict(tau_n=0.1, tau_s=0.1), 1.0),
        ("short read T_r = 3e-3", 32, 64, dict(layer, t_read=3e-3), 1.0),
        ("slow calcium tau_p = 100, T_r = 1e-3", 32, 64, dict(layer, tau_p=100.0, t_read=1e-3), 1.0),
    ]
    return [out[0], out[4]] if quick else out


def head(N: int, M: int, L: int, scale: float, seed: int = 0):
    """Feature rates of L queries (L, M) and the astrocyte weights g = scale * sum_t phi(k_t) (M,)."""
    D = 8
    kf, kq, kk = jax.random.split(jax.random.PRNGKey(seed), 3)
    fm = PositiveRandomFeatures(D, M, key=kf, dtype=jnp.float64)
    q = jax.random.normal(kq, (L, D), jnp.float64) * D**-0.25
    k = jax.random.normal(kk, (L, D), jnp.float64) * D**-0.25
    return fm(q), scale * jnp.sum(fm(k), axis=0)


def reference(field):
    zeros = jnp.zeros_like(field.phi_q)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        diffrax.Tsit5(),
        0.0,
        1.0,
        1e-9,
        (zeros, zeros),
        stepsize_controller=diffrax.PIDController(rtol=1e-12, atol=1e-14),
        max_steps=4_000_000,
    )
    return sol.ys[1][-1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two cases, tiny sizes (CI smoke test)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    L = 8 if args.quick else 32
    steps = (4, 8) if args.quick else (4, 6, 8, 16)
    rows = []
    for name, N, M, kwargs, scale in cases(args.quick):
        params = NAParams(**kwargs)
        phi_q, g = head(N, M, L, scale)
        field = _read_field(phi_q, jnp.broadcast_to(g, phi_q.shape), params, N)
        z_ref = jax.jit(reference)(field)
        errors = {
            scheme: {
                str(S): float(jnp.linalg.norm(run(field, params, N, M, S) - z_ref) / jnp.linalg.norm(z_ref))
                for S in steps
            }
            for scheme, run in SCHEMES.items()
        }
        rows.append(dict(case=name, N=N, M=M, params=kwargs, g_scale=scale, relative_error=errors))
        print(name, flush=True)
        for scheme, errs in errors.items():
            print(f"    {scheme:<36}" + "  ".join(f"S={S}: {errs[str(S)]:.1e}" for S in steps), flush=True)
    results = dict(
        config=dict(
            L=L,
            head_dim=8,
            steps=list(steps),
            dtype="float64",
            reference="Tsit5 + PIDController(rtol=1e-12, atol=1e-14), float64",
            error="relative Frobenius error of the read's end z(T_r) over queries and features",
        ),
        machine=machine_info(),
        rows=rows,
    )
    path = write_json(results, args.out, "read_schemes.json")
    _plot(rows, steps, path.with_suffix(".png"))
    print(f"wrote {path}")
    return results


def _plot(rows, steps, path):
    plt = pyplot()
    fig, axes = plt.subplots(1, len(SCHEMES), figsize=(5 * len(SCHEMES), 4.2), sharey=True)
    for ax, scheme in zip(axes, SCHEMES):
        for i, row in enumerate(rows):
            errors = [max(row["relative_error"][scheme][str(S)], 1e-17) for S in steps]
            ax.plot(steps, errors, "-o", color=f"C{i}", label=row["case"])
        ax.set(xscale="log", yscale="log", xlabel="steps per read", title=scheme)
        ax.set_xticks(list(steps), [str(S) for S in steps])
    axes[0].set_ylabel("relative error of z(T_r), float64")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
