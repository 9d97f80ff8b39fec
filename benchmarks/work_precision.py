"""Work–precision diagram of the ODE block: error against a tight float64 solution versus wall time, for the
available solvers and step-size controllers, so that the defaults are chosen on evidence.

Errors are relative (Frobenius) errors of the block's outputs, computed in the precision the block runs in
(float32, the default) against the reduced model solved by Tsit5 at rtol 1e-12 in float64 (the reduced
model equals the full N×M simulation to 1e-8 in the tests). Times are medians of forward passes over a
batch of B×H heads.

    python -m benchmarks.work_precision [--quick] [--out PATH]
"""

import argparse

import jax

jax.config.update("jax_enable_x64", True)  # a script, not the library: the float64 reference needs it

import diffrax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from astroformer import NAParams, PositiveRandomFeatures, na_attention  # noqa: E402

from ._common import compile_time, machine_info, pyplot, time_fn, write_json  # noqa: E402


def configurations(quick: bool):
    steps = (2, 4, 8) if quick else (2, 4, 8, 16, 32, 64)
    rtols = (1e-3,) if quick else (1e-2, 1e-4, 1e-6)
    fixed = (16, 64) if quick else (16, 64, 256, 1024)
    out = [(f"Magnus2 StepTo({n})", dict(read_steps=n)) for n in steps]
    out += [
        (
            f"Tsit5 PID rtol={r:g}",
            dict(
                solver=diffrax.Tsit5(),
                stepsize_controller=diffrax.PIDController(rtol=r, atol=r * 1e-3),
                max_steps=20_000,
            ),
        )
        for r in rtols
    ]
    # Explicit fixed steps, uniform in read time u = t / T_r in [0, 1] (the solves' time variable).
    out += [
        (
            f"Heun StepTo({n})",
            dict(
                solver=diffrax.Heun(), max_steps=n, stepsize_controller=diffrax.StepTo(ts=jnp.linspace(0.0, 1.0, n + 1))
            ),
        )
        for n in fixed
    ]
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI smoke test)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    # One batch of B x H heads at the speed benchmark's per-head size (explicit adaptive solvers need ~1e4
    # steps on this stiff problem, so the batch is kept small).
    B, H, L, D, M = (1, 2, 32, 8, 16) if args.quick else (1, 4, 256, 32, 64)
    kq, kk, kv, kf = jax.random.split(jax.random.PRNGKey(0), 4)
    fm = PositiveRandomFeatures(D, M, key=kf, dtype=jnp.float64)
    scale = D**-0.25
    q = jax.random.normal(kq, (B, H, L, D), jnp.float64) * scale
    k = jax.random.normal(kk, (B, H, L, D), jnp.float64) * scale
    v = jax.random.normal(kv, (B, H, L, D), jnp.float64)
    phi_q, phi_k = fm(q), fm(k)
    params = NAParams(tau_s=0.01 / M)

    def batched(**options):
        head = lambda a, b, c: na_attention(a, b, c, params, **options)  # noqa: E731
        return jax.jit(jax.vmap(jax.vmap(head)))

    reference = batched(
        solver=diffrax.Tsit5(), stepsize_controller=diffrax.PIDController(rtol=1e-12, atol=1e-14), max_steps=1_000_000
    )(phi_q, phi_k, v)
    equilibrium = batched(mode="equilibrium")(phi_q, phi_k, v)

    def rel(a):
        return float(jnp.linalg.norm(a.astype(jnp.float64) - reference) / jnp.linalg.norm(reference))

    inputs32 = tuple(a.astype(jnp.float32) for a in (phi_q, phi_k, v))
    rows = []
    for name, options in configurations(args.quick):
        fn = batched(**options)
        try:
            compile_s, compiled = compile_time(fn, *inputs32)
            out = compiled(*inputs32)
            timing = time_fn(compiled, *inputs32, repeats=2 if args.quick else args.repeats)
            error = rel(out)
        except Exception as err:  # a solver that fails is a result too
            rows.append(dict(name=name, error=None, failure=f"{type(err).__name__}: {str(err)[:200]}"))
            print(f"{name:<26} failed: {type(err).__name__}")
            continue
        finite = bool(jnp.all(jnp.isfinite(out)))
        rows.append(
            dict(name=name, relative_error=error if finite else None, finite=finite, compile_s=compile_s, **timing)
        )
        print(f"{name:<26} error {error:9.2e}   forward {1e3 * timing['median']:8.2f} ms")
    results = dict(
        config=dict(
            B=B, H=H, L=L, head_dim=D, M=M, dtype="float32", reference="Tsit5 rtol=1e-12 float64", params=repr(params)
        ),
        equilibrium_vs_reference=rel(equilibrium),
        machine=machine_info(),
        rows=rows,
    )
    path = write_json(results, args.out, "work_precision.json")
    _plot(rows, path.with_suffix(".png"))
    print(f"equilibrium vs finite-read reference: {results['equilibrium_vs_reference']:.2e}")
    print(f"wrote {path}")
    return results


def _plot(rows, path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for family, marker in (("Magnus2", "o"), ("Tsit5", "s"), ("Heun", "^")):
        pts = [
            (r["median"], r["relative_error"]) for r in rows if r["name"].startswith(family) and r.get("relative_error")
        ]
        if pts:
            ax.plot(*zip(*pts), marker=marker, label=family)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="forward time (s)",
        ylabel="relative error vs float64 reference",
        title="work–precision of the ODE block's read",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
