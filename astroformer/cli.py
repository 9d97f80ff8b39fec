"""The `astroformer` command line: `astroformer simulate` (and, where installed, train/sample/eval/bench)."""

import argparse
import sys
import time
from pathlib import Path


def _check_simulate_args(args) -> None:
    import math

    for name in ("length", "dim", "seed"):
        value = getattr(args, name)
        if value < (0 if name == "seed" else 1):
            raise ValueError(
                f"--{name}: expected a {'non-negative' if name == 'seed' else 'positive'} int, got {value}"
            )
    bad = [m for m in args.features if m < 1]
    if bad:
        raise ValueError(f"--features: expected positive feature counts, got {bad[0]}")
    for name in ("scale", "t_read"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"--{name.replace('_', '-')}: expected a positive, finite number, got {value}")
    figure = Path(args.figure)  # checked before the simulation, not after it
    if not str(args.figure).strip() or figure.is_dir():
        raise ValueError(f"--figure: expected the path of an image file, got {str(args.figure)!r}")
    from ._validate import check_creatable

    check_creatable("--figure", figure.parent, given=args.figure)


def _simulate(args) -> int:
    try:
        _check_simulate_args(args)
        return _simulate_inner(args)
    except (ValueError, TypeError, OSError, RuntimeError, FloatingPointError) as error:
        from ._errors import runtime_message

        message = runtime_message(error)
        if "RESOURCE_EXHAUSTED" in message or "Out of memory" in message:
            message = f"--length / --features: the simulation does not fit in memory ({message})"
        elif isinstance(error, RuntimeError):  # a runtime check in compiled code: NaN/inf from large inputs
            message = (
                f"--scale: expected a query/key norm small enough for float32 (exp(q.k) must be "
                f"finite), got {args.scale}: {message}"
            )
        print(f"astroformer simulate: error: {message}", file=sys.stderr)
        return 2


def _simulate_inner(args) -> int:
    import math

    import jax
    import jax.numpy as jnp

    from . import (
        NAParams,
        PositiveRandomFeatures,
        na_attention,
        plot_read_trajectory,
        read_trajectory,
        softmax_attention,
    )

    key = jax.random.PRNGKey(args.seed)
    kq, kk, kv, kf = jax.random.split(key, 4)
    L, D, N = args.length, args.dim, args.dim
    # Random tokens projected to queries/keys with moderate norms (|q| ~ |k| ~ scale), scaled by D^(-1/4).
    q = jax.random.normal(kq, (L, D)) * args.scale / jnp.sqrt(D)
    k = jax.random.normal(kk, (L, D)) * args.scale / jnp.sqrt(D)
    v = jax.random.normal(kv, (L, N))
    exact = softmax_attention(q, k, v, causal=True)
    if not bool(jnp.all(jnp.isfinite(exact))):
        raise FloatingPointError(
            f"--scale: expected a query/key norm small enough for exp(q.k) to be finite in "
            f"float32, got {args.scale} (the softmax reference is NaN/inf)"
        )

    def rel(a, b):
        return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))

    print(f"one head: L={L} tokens, D=N={D}, |q|,|k| ~ {args.scale}, seed {args.seed}, T_r={args.t_read}")
    print("tau_s = 0.01/M: the synapses relax at rate p/tau_s with p ~ sum_t exp(q.k_t)/M")
    print(f"{'M':>7} {'|ode-eq|/|eq|':>14} {'|eq-softmax|/|sm|':>18} {'|ode-softmax|/|sm|':>19} {'ode s':>7}")
    for M in args.features:
        params = NAParams(t_read=args.t_read, tau_s=0.01 / M)
        fm = PositiveRandomFeatures(D, M, key=kf)
        phi_q, phi_k = fm(q), fm(k)
        eq = na_attention(phi_q, phi_k, v, params, mode="equilibrium")
        start = time.perf_counter()
        ode = na_attention(phi_q, phi_k, v, params, mode="ode").block_until_ready()
        seconds = time.perf_counter() - start
        errors = (rel(ode, eq), rel(eq, exact), rel(ode, exact))
        if not all(map(math.isfinite, errors)):
            raise FloatingPointError(
                f"--scale: the outputs at M={M} are not finite (relative errors {errors}); "
                f"expected a smaller query/key norm than {args.scale}"
            )
        print(f"{M:>7} {errors[0]:>14.2e} {errors[1]:>18.2e} {errors[2]:>19.2e} {seconds:>7.2f}")

    M = args.features[0]
    params = NAParams(t_read=args.t_read, tau_s=0.01 / M)
    fm = PositiveRandomFeatures(D, M, key=kf)
    small = slice(0, min(L, 16))
    traj = read_trajectory(fm(q)[small], fm(k)[small], v[small], params, index=-1)
    eq = na_attention(fm(q)[small], fm(k)[small], v[small], params, mode="equilibrium")[-1]
    fig = plot_read_trajectory(traj, equilibrium=eq)
    fig.suptitle(f"read of token {small.stop} (M={M}, N={N})", y=1.02)
    out = Path(args.figure)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    print(f"saved the time courses of a read to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ._validate import seed_argument

    parser = argparse.ArgumentParser(prog="astroformer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("simulate", help="run one head in every mode on random tokens and compare")
    sim.add_argument("--length", type=int, default=64, help="number of tokens L")
    sim.add_argument("--dim", type=int, default=16, help="head dimension D = N")
    sim.add_argument("--features", type=int, nargs="+", default=[64, 1024, 16384], help="feature counts M")
    sim.add_argument("--scale", type=float, default=1.0, help="typical query/key norm")
    sim.add_argument("--t-read", type=float, default=1.0, help="read window T_r")
    sim.add_argument("--seed", type=seed_argument, default=0)
    sim.add_argument("--figure", default="astroformer-read.png", help="where to save the read's time courses")
    sim.set_defaults(func=_simulate)
    for extra in _extra_commands():
        extra(sub)
    return parser


def _extra_commands():
    """Subcommands contributed by other modules (training, benchmarks), registered if importable."""
    commands = []
    for module, name in (
        ("astroformer.training.cli", "register"),
        ("astroformer.fit.cli", "register"),
        ("astroformer._bench_command", "register"),
    ):
        try:
            mod = __import__(module, fromlist=[name])
        except ImportError:
            continue
        commands.append(getattr(mod, name))
    return commands


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
