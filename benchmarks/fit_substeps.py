"""How far the fitted model's traces are from an exact solve, as a function of `NAModel.substeps`.

The problem is the `astroformer fit` default one (L = 4, D = 3, M = 4, N = 2, |q|, |k| ~ 0.5, seed 0, tau_n =
0.05, tau_s = 0.2, tau_p = 2, 16 observation times geometric in [0.01, 2]), in float64. The reference is the
same read with 512 substeps (the error is second order, so it is ~1e-8 from the exact solution). Writes
`benchmarks/results/fit_substeps.json`: per substeps, the largest and the RMS error of x relative to the
largest and the RMS of the reference.

    python -m benchmarks.fit_substeps
"""

import jax

jax.config.update("jax_enable_x64", True)  # this script's own process only

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from astroformer import NAParams, PositiveRandomFeatures  # noqa: E402
from astroformer.fit import NAModel  # noqa: E402

from ._common import machine_info, write_json  # noqa: E402


def main():
    kq, kk, kv, kf = jax.random.split(jax.random.PRNGKey(0), 4)
    L, D, M, N = 4, 3, 4, 2
    q = 0.5 * jax.random.normal(kq, (L, D))
    k = 0.5 * jax.random.normal(kk, (L, D))
    v = jax.random.normal(kv, (L, N))
    feature_map = PositiveRandomFeatures(D, M, key=kf, dtype=jnp.float64)
    ts = np.geomspace(0.01, 2.0, 16)
    params = NAParams(tau_n=0.05, tau_s=0.2, tau_p=2.0)

    def x(substeps):
        return (
            NAModel(params=params, feature_map=feature_map, substeps=substeps).traces(q, k, v, ts, variables=("x",)).x
        )

    reference = x(512)
    rows = []
    for substeps in (2, 4, 8, 16, 32):
        error = x(substeps) - reference
        rows.append(
            {
                "substeps": substeps,
                "max_relative": float(jnp.max(jnp.abs(error)) / jnp.max(jnp.abs(reference))),
                "rms_relative": float(jnp.sqrt(jnp.mean(error**2) / jnp.mean(reference**2))),
            }
        )
        print(rows[-1])
    path = write_json({"reference_substeps": 512, "rows": rows, "machine": machine_info()}, name="fit_substeps.json")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
