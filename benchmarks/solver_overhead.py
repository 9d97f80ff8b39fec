"""Solver overhead: the reduced read solved by diffrax against the same method and steps as a plain `lax.scan`.

Both versions apply the identical `Magnus2` step on the identical grid, so they compute the same numbers; the
ratio is what diffrax's machinery (step-size controller, saving; the default read's backward is its custom
VJP, a `lax.scan` of the steps' VJPs, against autodiff of the scan) costs. Measured for
the read alone and for the whole block (write + read + readout), forward and forward+backward: forwards are
timed against forwards and forward+backward against forward+backward, the implementation that goes first
alternating every round. A call's time depends on what ran just before it, so that effect is measured too
(`forward_by_predecessor`: every forward right after the heaviest case, and right after itself).

    python -m benchmarks.solver_overhead [--quick] [--out PATH]
"""

import argparse
import statistics

import jax
import jax.numpy as jnp

from astroformer import NAParams, PositiveRandomFeatures
from astroformer._head._block import reduced_read
from astroformer._solvers._linear import linear_attention_state
from astroformer._head._read import QUERY_CHUNK, ReducedReadField, RelaxingCalcium, _step, read_grid
from astroformer._head._write import write_reduced

from ._common import compile_time, machine_info, pyplot, summarise, time_call, write_json


def scan_read(phi_q, memory, params, N, *, causal, read_steps):
    """The reduced read with the same `Magnus2` steps on the same grid (in step time, as the default solve),
    written as a `lax.scan`, on the same chunks of `QUERY_CHUNK` queries as the default solve (a `lax.map` over
    them when L is longer), so that the two differ only in diffrax's machinery."""
    L, M = phi_q.shape
    g = memory.astrocyte_weights()
    if not causal:
        g = jnp.broadcast_to(g[-1], g.shape)
    grid = read_grid(params, N, M, read_steps, phi_q.dtype)

    def read(rows):
        q, g_rows = rows
        p0 = q * g_rows
        kappa = N * M * params.t_read / params.tau_p
        source = RelaxingCalcium(p0=p0, p_bar=jnp.mean(p0, -1, keepdims=True), kappa=kappa)
        field = ReducedReadField(phi_q=q, source=source, params=params)

        def body(y, k):
            return _step(field, grid, k, y), None

        y, _ = jax.lax.scan(body, (jnp.zeros_like(q), jnp.zeros_like(q)), jnp.arange(read_steps))
        return y[1]

    if L <= QUERY_CHUNK:
        return read((phi_q, g))
    return jax.lax.map(read, (phi_q, g), batch_size=QUERY_CHUNK)


def diffrax_read(phi_q, memory, params, N, *, causal, read_steps):
    return reduced_read(
        phi_q,
        memory,
        params,
        N,
        causal=causal,
        solver=None,
        stepsize_controller=None,
        adjoint=None,
        read_steps=read_steps,
        max_steps=read_steps,
        throw=False,
    )


def make_block(read, *, read_only, read_steps):
    def head(phi_q, phi_k, v, params):
        present = jnp.ones(phi_q.shape[0], bool)
        memory = write_reduced(phi_k, v, params, present)
        z = read(phi_q, memory, params, v.shape[-1], causal=True, read_steps=read_steps)
        if read_only:
            return z
        return linear_attention_state(z, memory.keys, memory.values, memory.log_decay, causal=True)

    batched = jax.vmap(jax.vmap(head, in_axes=(0, 0, 0, None)), in_axes=(0, 0, 0, None))
    forward = jax.jit(batched)
    backward = jax.jit(jax.grad(lambda q, k, v, p: jnp.sum(batched(q, k, v, p) ** 2), argnums=(0, 1, 2)))
    return forward, backward


def _alternating(round_index):
    """The two implementations in the order they are timed in a round: which goes first alternates."""
    return ("diffrax", "scan") if round_index % 2 == 0 else ("scan", "diffrax")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI smoke test)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--read-steps", type=int, default=8, help="the library default")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    B, H, L, D, M = (2, 2, 32, 8, 16) if args.quick else (8, 4, 256, 32, 64)
    repeats = 2 if args.quick else args.repeats
    kq, kk, kv, kf = jax.random.split(jax.random.PRNGKey(0), 4)
    fm = PositiveRandomFeatures(D, M, key=kf)
    scale = D**-0.25
    phi_q = fm(jax.random.normal(kq, (B, H, L, D)) * scale)
    phi_k = fm(jax.random.normal(kk, (B, H, L, D)) * scale)
    v = jax.random.normal(kv, (B, H, L, D))
    params = NAParams(tau_s=0.01 / M)
    inputs = (phi_q, phi_k, v, params)

    config = dict(B=B, H=H, L=L, head_dim=D, M=M, read_steps=args.read_steps, dtype="float32", causal=True)
    results = {"config": config, "machine": machine_info(), "cases": {}}
    fns = {}
    for scope in ("read", "block"):
        for impl, read in (("diffrax", diffrax_read), ("scan", scan_read)):
            fwd, bwd = make_block(read, read_only=scope == "read", read_steps=args.read_steps)
            for kind, fn in (("forward", fwd), ("forward+backward", bwd)):
                name = f"{scope}/{impl}/{kind}"
                seconds, compiled = compile_time(fn, *inputs)
                jax.block_until_ready(compiled(*inputs))
                fns[name] = compiled
                results["cases"][name] = {"compile_s": seconds}
    # Same numbers from both implementations (they apply the same steps).
    same = float(jnp.max(jnp.abs(fns["block/diffrax/forward"](*inputs) - fns["block/scan/forward"](*inputs))))
    results["max_abs_difference_diffrax_vs_scan"] = same
    # Forwards are timed against forwards and forward+backward against forward+backward, the implementation that
    # goes first alternating every round: a call's time depends on what ran just before it (below).
    times = {name: [] for name in fns}
    for r in range(repeats):
        for kind in ("forward", "forward+backward"):
            for scope in ("read", "block"):
                for impl in _alternating(r):
                    name = f"{scope}/{impl}/{kind}"
                    times[name].append(time_call(fns[name], *inputs))
    ratios = {}
    for name in fns:
        results["cases"][name].update(summarise(times[name]))
    for scope in ("read", "block"):
        for kind in ("forward", "forward+backward"):
            d, s = times[f"{scope}/diffrax/{kind}"], times[f"{scope}/scan/{kind}"]
            ratios[f"{scope}/{kind}"] = statistics.median(d) / statistics.median(s)
    # What ran just before a call changes its time. Measured: each forward timed right after the heaviest case
    # (autodiff of the scan through the block, untimed) and right after an untimed call of itself.
    heavy = fns["block/scan/forward+backward"]
    before = {"after_heaviest_case": lambda name: heavy(*inputs), "after_itself": lambda name: fns[name](*inputs)}
    predecessor = {
        label: {f"{scope}/{impl}": [] for scope in ("read", "block") for impl in ("diffrax", "scan")}
        for label in before
    }
    for r in range(repeats):
        for label, run_before in before.items():
            for scope in ("read", "block"):
                for impl in _alternating(r):
                    name = f"{scope}/{impl}/forward"
                    jax.block_until_ready(run_before(name))
                    predecessor[label][f"{scope}/{impl}"].append(time_call(fns[name], *inputs))
    medians = {label: {key: statistics.median(ts) for key, ts in cases.items()} for label, cases in predecessor.items()}
    results["forward_by_predecessor"] = {
        "median_s": medians,
        "ratio_diffrax_over_scan": {
            label: {scope: m[f"{scope}/diffrax"] / m[f"{scope}/scan"] for scope in ("read", "block")}
            for label, m in medians.items()
        },
        "slowdown_after_heaviest_case": {
            key: medians["after_heaviest_case"][key] / medians["after_itself"][key] for key in medians["after_itself"]
        },
    }
    results["ratio_diffrax_over_scan"] = ratios
    path = write_json(results, args.out, "solver_overhead.json")
    _plot(results, path.with_suffix(".png"))
    print(f"diffrax / scan (median of {repeats}, same steps, outputs differ by {same:.1e}):")
    for key, ratio in ratios.items():
        print(
            f"  {key:<24} {ratio:5.2f}x   ({1e3 * results['cases'][key.replace('/', '/diffrax/', 1)]['median']:.1f} ms)"
        )
    for label, r in results["forward_by_predecessor"]["ratio_diffrax_over_scan"].items():
        print(f"  forward, {label.replace('_', ' ')}: " + ", ".join(f"{k} {v:.2f}x" for k, v in r.items()))
    print(f"wrote {path}")
    return results


def _plot(results, path):
    plt = pyplot()
    cases = results["cases"]
    labels = [f"{scope}\n{kind}" for scope in ("read", "block") for kind in ("forward", "forward+backward")]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for offset, impl in ((-0.2, "diffrax"), (0.2, "scan")):
        medians = [
            1e3 * cases[f"{scope}/{impl}/{kind}"]["median"]
            for scope in ("read", "block")
            for kind in ("forward", "forward+backward")
        ]
        ax.bar([i + offset for i in range(4)], medians, 0.4, label=impl)
    ax.set_xticks(range(4), labels, fontsize=8)
    ax.set(ylabel="median time (ms)", title="the same Magnus2 steps: diffrax vs lax.scan")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
