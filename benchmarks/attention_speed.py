"""Speed of one multi-head attention block per kind, and the accuracy that goes with the neuron–astrocyte speed.

Run as ``python -m benchmarks.attention_speed [--quick] [--lengths 64 128 ...] [--out PATH]``.

For every sequence length L it builds one layer per kind (`SoftmaxAttention`, `LinearAttention`,
`NeuronAstrocyteAttention` in equilibrium and ODE mode, default reduced state; the literal N×M `state="full"`
ODE, the O(N·M) reference, only on request at tiny L (``--full-max-length``), forward only, since its
gradient takes minutes to compile) on a batch (B, L, d_model) in float32, and measures

- compile time of the jitted forward and forward+backward (`lower().compile()`),
- forward time and forward+backward time: the gradient of a scalar loss with respect to the input x (hence the
  queries, keys and values) and all the layer's parameters; `na-ode-fixed-tau` is the `na-ode` layer with its
  time constants held fixed, as `astroformer train` holds them (the gradient training computes),

interleaved: inside each repeat every kind is timed once, in a rotating order, so that machine noise hits all
kinds alike. Every raw time is kept, with the median and the ratio of medians to softmax (the library's per-head layer)
and to the fastest softmax (`ratio_to_fastest_softmax`: the faster of that layer and `softmax-batched`, one
`jax.nn.dot_product_attention` call over all heads at once) measured in the same
run. Then the accuracy of the ``na-ode`` default:

- against a tight float64 solve of the full (N×M) model on a small instance (one head), and
- float32 default (reduced state, `Magnus2` on `read_steps` steps) against a float64 reduced solve with a
  generic adaptive solver (`Tsit5`, `PIDController(rtol=1e-10)`) at the benchmark's per-head size, with the
  float64 Magnus2 error for several `read_steps` (the evidence for the default step count).

Output: JSON (``benchmarks/results/attention_speed.json``) and a log–log plot of time against L
(``attention_speed.png``).
"""

import argparse
import sys
import time
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import astroformer as af

from ._common import (
    RESULTS_DIR,
    add_host_memory_argument,
    apply_host_memory_argument,
    compile_time,
    machine_info,
    pyplot,
    summarise,
    time_call,
    write_json,
)


KINDS = ("softmax", "softmax-batched", "linear", "na-equilibrium", "na-ode", "na-ode-fixed-tau", "na-ode-full")
FORWARD_ONLY = ("na-ode-full",)
SOFTMAX_KINDS = ("softmax", "softmax-batched")


class BatchedSoftmaxAttention(eqx.Module):
    """`SoftmaxAttention`'s projections around one `jax.nn.dot_product_attention` call over all heads at once
    (the fastest softmax JAX offers here), instead of the per-head `vmap` of the library's layer."""

    layer: af.SoftmaxAttention

    def __call__(self, x):
        L, d_model = x.shape
        H = self.layer.num_heads
        project = lambda lin, a: a @ lin.weight.T + lin.bias  # noqa: E731
        q, k, v = (
            project(lin, x).reshape(1, L, H, d_model // H)
            for lin in (self.layer.query, self.layer.key, self.layer.value)
        )
        out = jax.nn.dot_product_attention(q, k, v, is_causal=True)[0]
        return project(self.layer.output, out.reshape(L, d_model))


class FixedTimeConstants(eqx.Module):
    """The na-ode layer with its time constants held fixed (`jax.lax.stop_gradient`), as `astroformer train`
    holds them (`trainable_filter`): its gradient is the one training computes, and the read's backward skips the
    cotangents of its per-step scalars."""

    layer: af.NeuronAstrocyteAttention

    def __call__(self, x):
        return eqx.tree_at(lambda a: a.params, self.layer, jax.lax.stop_gradient(self.layer.params))(x)


def build_layer(kind: str, d_model: int, num_heads: int, num_features: int, key):
    if kind == "na-ode-fixed-tau":
        return FixedTimeConstants(af.make_attention("na-ode", d_model, num_heads, num_features=num_features, key=key))
    if kind == "softmax-batched":
        return BatchedSoftmaxAttention(af.make_attention("softmax", d_model, num_heads, key=key))
    if kind == "na-ode-full":
        # The literal model's default implicit solve needs float64; in float32 an explicit adaptive solve works.
        return af.make_attention(
            "na-ode", d_model, num_heads, num_features=num_features, key=key, state="full", solver=diffrax.Tsit5()
        )
    features = dict(num_features=num_features) if kind.startswith("na-") else {}
    return af.make_attention(kind, d_model, num_heads, key=key, **features)


def _forward(layer, x):
    return jax.vmap(layer)(x)


def _loss(layer, x, cotangent):
    return jnp.sum(jax.vmap(layer)(x) * cotangent)


_grad = jax.grad(_loss, argnums=(0, 1))


def bench_length(
    L: int, kinds, *, batch: int, heads: int, head_dim: int, features: int, repeats: int, warmup: int, seed: int = 0
) -> dict:
    """Compile and time every kind at sequence length `L`, interleaved; returns {kind: record}."""
    d_model = heads * head_dim
    kx, kc, kl = jax.random.split(jax.random.PRNGKey(seed + L), 3)
    x = jax.random.normal(kx, (batch, L, d_model), jnp.float32)
    cot = jax.random.normal(kc, (batch, L, d_model), jnp.float32)
    fwd, grad = jax.jit(_forward), jax.jit(_grad)
    compiled = {}
    records = {}
    for kind in kinds:
        layer = build_layer(kind, d_model, heads, features, kl)
        c_fwd, f = compile_time(fwd, layer, x)
        if kind in FORWARD_ONLY:  # its gradient (adaptive implicit solves) takes minutes to compile
            c_bwd, g = None, None
        else:
            c_bwd, g = compile_time(grad, layer, x, cot)
        for _ in range(warmup):
            out = jax.block_until_ready(f(layer, x))
            if g is not None:
                jax.block_until_ready(g(layer, x, cot))
        compiled[kind] = (layer, f, g)
        records[kind] = {
            "compile_s": {"forward": c_fwd, "forward_backward": c_bwd},
            "output_finite": bool(jnp.all(jnp.isfinite(out))),
            "forward": [],
            "forward_backward": [],
        }
    for r in range(repeats):
        order = list(kinds[r % len(kinds) :]) + list(kinds[: r % len(kinds)])  # rotate the order per repeat
        for kind in order:
            layer, f, g = compiled[kind]
            records[kind]["forward"].append(time_call(f, layer, x))
            if g is not None:
                records[kind]["forward_backward"].append(time_call(g, layer, x, cot))
    for kind in kinds:
        for phase in ("forward", "forward_backward"):
            records[kind][phase] = summarise(records[kind][phase]) if records[kind][phase] else None
    if "softmax" in records:
        for kind in kinds:
            records[kind]["ratio_to_softmax"] = {
                phase: records[kind][phase]["median"] / records["softmax"][phase]["median"]
                for phase in ("forward", "forward_backward")
                if records[kind][phase] is not None
            }
    softmaxes = [k for k in SOFTMAX_KINDS if k in records]
    if softmaxes:
        fastest = {
            phase: min(records[k][phase]["median"] for k in softmaxes) for phase in ("forward", "forward_backward")
        }
        for kind in kinds:
            records[kind]["ratio_to_fastest_softmax"] = {
                phase: records[kind][phase]["median"] / fastest[phase]
                for phase in ("forward", "forward_backward")
                if records[kind][phase] is not None
            }
    return records


# ----------------------------------------------------------------------------------------------------- accuracy


def _relative_error(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _head_inputs(L, D, N, M, seed, dtype):
    kf, kq, kk, kv = jax.random.split(jax.random.PRNGKey(seed), 4)
    fm = af.PositiveRandomFeatures(D, M, key=kf, dtype=dtype)
    scale = D**-0.25
    q = jax.random.normal(kq, (L, D), dtype) * scale
    k = jax.random.normal(kk, (L, D), dtype) * scale
    v = jax.random.normal(kv, (L, N), dtype)
    return fm(q), fm(k), v


def accuracy_full(L: int, D: int, N: int, M: int, read_steps: int, seed: int = 0) -> dict:
    """na-ode default (float32, reduced, Magnus2) against the full N×M model solved in float64 with
    `Tsit5` + `PIDController(rtol=1e-10, atol=1e-13)`, one head (explicit: an implicit solver's dense
    Jacobian of the 2NM-dimensional state costs far more here, and the controller keeps the steps stable)."""
    import diffrax

    params = dict(tau_s=0.01 / M)
    with jax.enable_x64(True):
        phi_q, phi_k, v = _head_inputs(L, D, N, M, seed, jnp.float64)
        start = time.perf_counter()
        ref = af.na_attention(
            phi_q,
            phi_k,
            v,
            af.NAParams(**params),
            state="full",
            solver=diffrax.Tsit5(),
            stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-13),
            max_steps=100_000,
        )
        ref = np.asarray(ref)
        seconds = time.perf_counter() - start
        phi_q, phi_k, v = (np.asarray(a) for a in (phi_q, phi_k, v))
    out32 = af.na_attention(
        jnp.asarray(phi_q, jnp.float32),
        jnp.asarray(phi_k, jnp.float32),
        jnp.asarray(v, jnp.float32),
        af.NAParams(**params),
        read_steps=read_steps,
    )
    return {
        "L": L,
        "D": D,
        "N": N,
        "M": M,
        "read_steps": read_steps,
        "reference_seconds": seconds,
        "reference": "float64 state='full', Tsit5 + PIDController(rtol=1e-10, atol=1e-13)",
        "relative_error_float32_default": _relative_error(out32, ref),
    }


def accuracy_reduced(L: int, D: int, M: int, steps_sweep, read_steps: int, seed: int = 0) -> dict:
    """float32 default against a float64 reduced solve with `Tsit5` + `PIDController(rtol=1e-10)`, one head at
    the benchmark's per-head size; also float64 Magnus2 for each `read_steps` in `steps_sweep`."""
    import diffrax

    N = D
    params = af.NAParams(tau_s=0.01 / M)
    with jax.enable_x64(True):
        phi_q, phi_k, v = _head_inputs(L, D, N, M, seed, jnp.float64)
        start = time.perf_counter()
        ref = af.na_attention(
            phi_q,
            phi_k,
            v,
            params,
            solver=diffrax.Tsit5(),
            stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-12),
            max_steps=200_000,
        )
        ref = np.asarray(ref)
        seconds = time.perf_counter() - start
        sweep = {}
        for n in steps_sweep:
            sweep[str(n)] = _relative_error(af.na_attention(phi_q, phi_k, v, params, read_steps=n), ref)
        phi_q, phi_k, v = (np.asarray(a) for a in (phi_q, phi_k, v))
    out32 = af.na_attention(
        jnp.asarray(phi_q, jnp.float32),
        jnp.asarray(phi_k, jnp.float32),
        jnp.asarray(v, jnp.float32),
        params,
        read_steps=read_steps,
    )
    equilibrium = af.na_attention(
        jnp.asarray(phi_q, jnp.float32),
        jnp.asarray(phi_k, jnp.float32),
        jnp.asarray(v, jnp.float32),
        params,
        mode="equilibrium",
    )
    return {
        "L": L,
        "D": D,
        "N": N,
        "M": M,
        "read_steps": read_steps,
        "reference_seconds": seconds,
        "reference": "float64 state='reduced', Tsit5 + PIDController(rtol=1e-10, atol=1e-12)",
        "relative_error_float32_default": _relative_error(out32, ref),
        "relative_error_float64_magnus2_by_read_steps": sweep,
        "relative_distance_to_equilibrium": _relative_error(ref, equilibrium),
    }


# --------------------------------------------------------------------------------------------------------- plot


def plot(results: dict, path: Path) -> None:
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, phase, title in zip(axes, ("forward", "forward_backward"), ("forward", "forward + backward")):
        for kind in KINDS:
            pts = [
                (int(L), rec[kind][phase]["median"])
                for L, rec in results["lengths"].items()
                if kind in rec and rec[kind][phase] is not None
            ]
            if pts:
                Ls, ts = zip(*sorted(pts))
                ax.plot(Ls, np.array(ts) * 1e3, "o-", label=kind)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length L")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    cfg = results["config"]
    axes[0].set_ylabel("median time per call (ms)")
    axes[1].legend()
    fig.suptitle(
        f"one attention block on {results['machine']['backend'].upper()}: B={cfg['batch']}, "
        f"H={cfg['heads']}, d={cfg['head_dim']}, M={cfg['features']}, float32"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, < 60 s (CI smoke test)")
    parser.add_argument("--lengths", type=int, nargs="+", help="sequence lengths (default 64 ... 2048)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "attention_speed.json", help="JSON path")
    parser.add_argument("--repeats", type=int, help="timed calls per kind and length")
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="skip a kind at longer L once one of its fwd+bwd calls exceeds this many seconds",
    )
    parser.add_argument(
        "--full-max-length",
        type=int,
        default=None,
        help="largest L at which the state='full' reference is timed (forward only; default 0:"
        " not timed, its cost is the accuracy reference's `reference_seconds`)",
    )
    parser.add_argument("--no-accuracy", action="store_true", help="skip the accuracy measurements")
    add_host_memory_argument(parser)
    args = parser.parse_args(argv)
    apply_host_memory_argument(args)

    if args.quick:
        cfg = dict(
            batch=2,
            heads=2,
            head_dim=8,
            features=16,
            lengths=[16, 32],
            repeats=3,
            warmup=1,
            full_max_length=0,
            full_length=[8],
            budget=5.0,
        )
        acc = dict(full=dict(L=8, D=4, N=4, M=8), reduced=dict(L=32, D=8, M=16), sweep=[4, 8])
    else:
        cfg = dict(
            batch=8,
            heads=4,
            head_dim=32,
            features=64,
            lengths=[64, 128, 256, 512, 1024, 2048],
            repeats=5,
            warmup=1,
            full_max_length=0,
            full_length=[8],
            budget=20.0,
        )
        acc = dict(full=dict(L=16, D=16, N=16, M=32), reduced=dict(L=256, D=32, M=64), sweep=[4, 8, 16, 32])
    if args.lengths:
        cfg["lengths"] = args.lengths
    if args.repeats:
        cfg["repeats"] = args.repeats
    if args.budget is not None:
        cfg["budget"] = args.budget
    if args.full_max_length is not None:
        cfg["full_max_length"] = args.full_max_length
    read_steps = af.NeuronAstrocyteAttention(
        cfg["heads"] * cfg["head_dim"], cfg["heads"], key=jax.random.PRNGKey(0)
    ).read_steps
    results = {
        "benchmark": "attention_speed",
        "config": {k: v for k, v in cfg.items()},
        "dtype": "float32",
        "read_steps": read_steps,
        "machine": machine_info(),
        "lengths": {},
        "skipped": [],
    }
    t_start = time.perf_counter()
    slow = set()
    lengths = sorted(set(cfg["lengths"]) | ({L for L in cfg["full_length"] if L <= cfg["full_max_length"]}))
    for L in lengths:
        kinds = [k for k in KINDS if k not in slow and k != "na-ode-full" and L in cfg["lengths"]]
        if "na-ode-full" not in slow and L <= cfg["full_max_length"]:
            kinds.append("na-ode-full")
        for soft in reversed(SOFTMAX_KINDS):
            if soft not in kinds:
                kinds.insert(0, soft)
        for k in KINDS:
            if k in slow:
                results["skipped"].append(
                    {"L": L, "kind": k, "why": f"a fwd+bwd call took > {cfg['budget']} s at a shorter length"}
                )
        print(f"L={L}: {', '.join(kinds)}", file=sys.stderr, flush=True)
        rec = bench_length(
            L,
            kinds,
            batch=cfg["batch"],
            heads=cfg["heads"],
            head_dim=cfg["head_dim"],
            features=cfg["features"],
            repeats=cfg["repeats"],
            warmup=cfg["warmup"],
        )
        for kind, r in rec.items():
            fb = r["forward_backward"]
            fastest = r["ratio_to_fastest_softmax"]
            print(
                f"  {kind:15s} fwd {r['forward']['median'] * 1e3:9.2f} ms  fwd+bwd "
                f"{fb['median'] * 1e3 if fb else float('nan'):9.2f} ms  x fastest softmax "
                f"{fastest['forward']:6.2f} / {fastest.get('forward_backward', float('nan')):6.2f}  compile "
                f"{r['compile_s']['forward']:5.1f} / {r['compile_s']['forward_backward'] or float('nan'):5.1f} s",
                file=sys.stderr,
                flush=True,
            )
            if max((fb or r["forward"])["times"]) > cfg["budget"]:
                slow.add(kind)
        results["lengths"][str(L)] = rec
        write_json(results, args.out)
    results["benchmark_seconds"] = time.perf_counter() - t_start

    if not args.no_accuracy:
        t0 = time.perf_counter()
        print("accuracy ...", file=sys.stderr, flush=True)
        results["accuracy"] = {
            "na_ode_vs_full_float64": accuracy_full(**acc["full"], read_steps=read_steps),
            "na_ode_float32_vs_reduced_float64": accuracy_reduced(
                **acc["reduced"], steps_sweep=acc["sweep"], read_steps=read_steps
            ),
        }
        results["accuracy_seconds"] = time.perf_counter() - t0
        print(results["accuracy"], file=sys.stderr, flush=True)
    path = write_json(results, args.out)
    plot(results, path.with_suffix(".png"))
    print(f"wrote {path} and {path.with_suffix('.png')}", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
