"""Where the time of one neuron–astrocyte head batch goes: write, read, readout, against softmax.

One head batch (B, H, L, D, M), float32, causal, through the public `na_attention` vmapped over batch and heads
(per-head parameters, as `NeuronAstrocyteAttention` passes them), against a batched
`jax.nn.dot_product_attention` over all heads at once. Each case is jitted alone and timed interleaved with the
others (every case once per round), forward and forward+backward (gradient of a random projection of the
output with respect to q, k and v, through the feature maps), with its compile time:

- `softmax`: `jax.nn.dot_product_attention(q, k, v, is_causal=True)` on (B, L, H, D);
- `na-equilibrium`, `na-ode`: `na_attention` in each mode;
- `na-ode/write`, `na-ode/read`, `na-ode/readout`: the three phases of the ode head jitted alone (the write's
  `ReducedMemory`; the solve of z(T_r); the causal linear readout). Each also computes what it needs of the
  feature maps and of the write (undifferentiated where the phase does not own it), so the three overlap; and
  the chunked head composes them chunk by chunk, so they do not add up to `na-ode` exactly. Every
  output element of a phase reaches the timed output (an (L, W) output is folded to (L, N) by summing its W/N
  column blocks), so that XLA does not drop part of the work;
- `floor/read`: not the model, but a reference recurrence of the same shape: the same (query, feature)
  elements, inputs and per-step scalars as the read, S steps of sigma' = e^{-alpha} sigma + 1 - e^{-alpha},
  z' = e^{-beta} z + beta eta phi(q) (sigma + sigma')/2 (one exponential per element and step, no division and
  no guarded function), unrolled so that XLA fuses all steps into one pass. What `na-ode/read`'s forward costs
  beyond it is the `Magnus2` step's own arithmetic (its divided differences and their guards), the loop over
  the steps and the read's query chunks. Forward only: autodiff of the unrolled chain keeps every step's intermediates and says nothing
  about what a backward needs. With the read's policy (nothing kept from the forward) a backward recomputes the
  steps and sweeps them in reverse: about three such forwards;
- `floor/inputs`: what `floor/read` and `na-ode/read` compute before their steps (the feature maps, the write,
  the calcium's initial value and mean, the per-step scalars), forward only, so that `floor/read` minus it is
  the reference recurrence alone, and `na-ode/read`'s forward minus it the read's own solve.

    python -m benchmarks.read_profile [--quick] [--repeats N] [--length L] [--out PATH] [--release-host-memory]

Like the other speed benchmarks it keeps freed host memory (`astroformer.keep_freed_host_memory`, as
`astroformer train` does) unless `--release-host-memory` is given; before 2026-12-05 it did not, and its
na-ode calls page-faulted on fresh temporaries at random.
"""

import argparse
import statistics
import sys

import jax
import jax.numpy as jnp

import astroformer as af
from astroformer._head._block import _read_field, reduced_read
from astroformer._head._read import _step_scalars, read_grid
from astroformer._solvers._linear import linear_attention_state
from astroformer._head._write import write_reduced

from ._common import (
    add_host_memory_argument,
    apply_host_memory_argument,
    compile_time,
    machine_info,
    summarise,
    time_call,
    write_json,
)


def _inputs(B, H, L, D, M, seed=0):
    kq, kk, kv, kf, kc = jax.random.split(jax.random.PRNGKey(seed), 5)
    fm = af.PositiveRandomFeatures(D, M, key=kf)
    scale = D**-0.25
    q = jax.random.normal(kq, (B, H, L, D)) * scale
    k = jax.random.normal(kk, (B, H, L, D)) * scale
    v = jax.random.normal(kv, (B, H, L, D))
    params = jax.tree.map(lambda a: jnp.broadcast_to(jnp.asarray(a, jnp.float32), (H,)), af.NAParams(tau_s=0.01 / M))
    cot = jax.random.normal(kc, (B, H, L, D))
    return fm, q, k, v, params, cot


FORWARD_ONLY = ("floor/read", "floor/inputs")


def _fold(a, N):
    """(..., L, W) -> (..., L, N): the sum of a's W/N column blocks, so every element of `a` reaches the output."""
    W = a.shape[-1]
    assert W % N == 0, (W, N)
    return a.reshape(*a.shape[:-1], W // N, N).sum(-2)


def _frozen_memory(pk, v, prm):
    """The write's `ReducedMemory` of every token, undifferentiated: what the read's cases start from."""
    return write_reduced(jax.lax.stop_gradient(pk), jax.lax.stop_gradient(v), prm, jnp.ones(pk.shape[0], bool))


def _per_head(fn):
    """vmap a per-head function over heads (with per-head params) then batch."""
    return jax.vmap(jax.vmap(fn, in_axes=(0, 0, 0, 0)), in_axes=(0, 0, 0, None))


def cases(fm, read_steps):
    def ode(pq, pk, v, prm):
        return af.na_attention(pq, pk, v, prm, read_steps=read_steps)

    def eq(pq, pk, v, prm):
        return af.na_attention(pq, pk, v, prm, mode="equilibrium")

    def write(pq, pk, v, prm):
        mem = write_reduced(pk, v, prm, jnp.ones(pk.shape[0], bool))
        g = mem.astrocyte_weights()
        every = jnp.concatenate([mem.keys[0], mem.keys[1], g, mem.values[0], mem.values[1]], -1)
        return _fold(every * mem.log_decay[:, None], v.shape[-1])

    def read(pq, pk, v, prm):
        mem = _frozen_memory(pk, v, prm)
        z = reduced_read(
            pq,
            mem,
            prm,
            v.shape[-1],
            causal=True,
            solver=None,
            stepsize_controller=None,
            adjoint=None,
            read_steps=read_steps,
            max_steps=read_steps,
            throw=True,
        )
        return _fold(z, v.shape[-1])

    def floor_inputs(pq, pk, v, prm):
        mem = _frozen_memory(pk, v, prm)
        field = _read_field(pq, mem.read_weights(True), prm, v.shape[-1])
        scalars = _step_scalars(field, read_grid(prm, v.shape[-1], pq.shape[-1], read_steps, pq.dtype))
        return field, scalars

    def floor(pq, pk, v, prm):
        field, (c, beta, rho, eta) = floor_inputs(pq, pk, v, prm)
        p0, p_bar = field.source.p0, field.source.p_bar
        sigma = z = jnp.zeros_like(pq)
        for i in range(read_steps):  # unrolled: one fused pass over the elements
            e = jnp.exp(-c[i] * (p_bar + (p0 - p_bar) * rho[i]))
            sigma_next = e * sigma + (1.0 - e)
            z = jnp.exp(-beta[i]) * z + (beta[i] * eta[i]) * pq * (sigma + sigma_next) * 0.5
            sigma = sigma_next
        return _fold(z, v.shape[-1])

    def inputs(pq, pk, v, prm):
        field, scalars = floor_inputs(pq, pk, v, prm)
        out = field.phi_q + field.source.p0 + field.source.p_bar + sum(jnp.sum(x) for x in scalars)
        return _fold(out, v.shape[-1])

    def readout(pq, pk, v, prm):
        mem = write_reduced(jax.lax.stop_gradient(pk), v, prm, jnp.ones(pk.shape[0], bool))
        return linear_attention_state(pq, mem.keys, mem.values, mem.log_decay, causal=True)

    out = {}
    for name, head in (
        ("na-ode", ode),
        ("na-equilibrium", eq),
        ("na-ode/write", write),
        ("na-ode/read", read),
        ("na-ode/readout", readout),
        ("floor/read", floor),
        ("floor/inputs", inputs),
    ):
        batched = _per_head(head)

        def f(q, k, v, prm, batched=batched):
            return batched(fm(q), fm(k), v, prm)

        out[name] = f

    def softmax(q, k, v, prm):
        def t(a):  # (B, H, L, D) -> (B, L, H, D)
            return a.transpose(0, 2, 1, 3)

        return t(jax.nn.dot_product_attention(t(q), t(k), t(v), is_causal=True, scale=1.0))

    out["softmax"] = softmax
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--read-steps", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--cases", nargs="+", help="only these cases (softmax is always timed)")
    parser.add_argument("--out", default=None)
    add_host_memory_argument(parser)
    args = parser.parse_args(argv)
    apply_host_memory_argument(args)
    B, H, L, D, M = (2, 2, 32, 8, 16) if args.quick else (8, 4, args.length, 32, 64)
    fm, q, k, v, params, cot = _inputs(B, H, L, D, M)
    inputs = (q, k, v, params)
    results = {
        "benchmark": "read_profile",
        "config": dict(
            B=B, H=H, L=L, D=D, M=M, read_steps=args.read_steps, dtype="float32", causal=True, repeats=args.repeats
        ),
        "machine": machine_info(),
        "cases": {},
    }
    compiled = {}
    selected = cases(fm, args.read_steps)
    if args.cases:
        selected = {name: f for name, f in selected.items() if name in args.cases or name == "softmax"}
    for name, f in selected.items():
        phases = ("forward",) if name in FORWARD_ONLY else ("forward", "forward_backward")

        def loss(q, k, v, prm, f=f):
            out = f(q, k, v, prm)
            return jnp.sum(out * cot[..., : out.shape[-1]])

        for phase in phases:
            fn = jax.jit(f) if phase == "forward" else jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
            seconds, c = compile_time(fn, *inputs)
            jax.block_until_ready(c(*inputs))
            compiled[(name, phase)] = c
            results["cases"].setdefault(name, {})[f"compile_s_{phase}"] = seconds
            print(f"compiled {name} {phase}: {seconds:.2f} s", file=sys.stderr, flush=True)
    times = {key: [] for key in compiled}
    for _ in range(args.repeats):
        for key, c in compiled.items():
            times[key].append(time_call(c, *inputs))
    for (name, phase), ts in times.items():
        results["cases"][name][phase] = summarise(ts)
    soft = {phase: statistics.median(times[("softmax", phase)]) for phase in ("forward", "forward_backward")}
    for name in results["cases"]:
        results["cases"][name]["ratio_to_softmax"] = {
            phase: statistics.median(times[(name, phase)]) / soft[phase] for phase in soft if (name, phase) in times
        }
    path = write_json(results, args.out, "read_profile.json")
    for name, rec in results["cases"].items():
        ratio = rec["ratio_to_softmax"]
        line = f"{name:16s} fwd {rec['forward']['median'] * 1e3:8.1f} ms (x softmax {ratio['forward']:.2f})"
        compiles = f"{rec['compile_s_forward']:.1f}"
        if "forward_backward" in rec:
            line += f"  fwd+bwd {rec['forward_backward']['median'] * 1e3:8.1f} ms (x softmax {ratio['forward_backward']:.2f})"
            compiles += f" / {rec['compile_s_forward_backward']:.1f}"
        print(f"{line}  compile {compiles} s")
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
