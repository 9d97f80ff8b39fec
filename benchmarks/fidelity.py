"""Fidelity — the paper's experiment, on a transformer that astroformer trains itself.

1. Train (or load) a small softmax character model on the default corpus.
2. Transfer its query/key/value/output weights into neuron–astrocyte heads and, for one validation sequence,
   compare token by token the astrocyte response $\\phi(q_t)\\cdot\\sum_{\\tau\\le t}\\phi(k_\\tau)$ with the
   softmax normaliser $\\sum_{\\tau\\le t} e^{q_t\\cdot k_\\tau}$, and the heads' outputs, for M from 10^2 to 10^5
   feature neurons and several read durations (correlation and relative error).
3. The downstream question: the model's bits per character when every softmax head is replaced by its
   transferred neuron–astrocyte head, as a function of M and of the read duration.

    python -m benchmarks.fidelity [--quick] [--run-dir DIR] [--out PATH]

References: Kozachkov, Kastanenka & Krotov, PNAS 120:e2219150120 (2023), Fig. 3.
"""

import argparse
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from astroformer import NAParams, NeuronAstrocyteAttention, PositiveRandomFeatures, na_attention, softmax_attention
from astroformer.tasks import bits_per_char
from astroformer.training import TrainConfig, load_run, train
from astroformer.training._model import _dense, _layer_norm

from ._common import RESULTS_DIR, machine_info, pyplot, write_json


def softmax_model(run_dir: Path, quick: bool):
    """Load the softmax character model in `run_dir`, training it first if the directory has none."""
    if not (run_dir / "config.json").exists():
        config = TrainConfig(task="charlm", attention="softmax", d_model=64, num_layers=2, num_heads=4,
                             steps=40 if quick else 1500, batch_size=16, eval_every=20 if quick else 250,
                             checkpoint_every=0, run_dir=str(run_dir), seed=0)
        train(config, progress=not quick)
    config, task, model, _ = load_run(run_dir)
    if config.attention != "softmax":
        raise ValueError(f"--run-dir: expected a softmax run, got attention={config.attention!r}")
    return config, task, model


def heads_qkv(model, tokens):
    """Per layer: scaled queries, keys (H, L, D) and values (H, L, D) of every head on one sequence."""
    L = tokens.shape[0]
    x = model.embedding[tokens] + model.positions[:L]
    out = []
    for block in model.blocks:
        attn = block.attention
        h = _layer_norm(block.norm1, x)
        H = attn.num_heads
        D = h.shape[-1] // H

        def split(a):
            return a.reshape(L, H, D).transpose(1, 0, 2)

        scale = D**-0.25
        out.append((split(_dense(attn.query, h)) * scale, split(_dense(attn.key, h)) * scale,
                    split(_dense(attn.value, h))))
        x = block(x[None], None)[0]
    return out


def transferred(model, M: int, params: NAParams, mode: str, *, key):
    """The model with every softmax layer replaced by a neuron–astrocyte layer with the same weights."""
    blocks = []
    for i, block in enumerate(model.blocks):
        sm = block.attention
        D = sm.query.weight.shape[0] // sm.num_heads
        na = NeuronAstrocyteAttention(sm.query.weight.shape[0], sm.num_heads, mode=mode, params=params,
                                      feature_map=PositiveRandomFeatures(D, M, key=jax.random.fold_in(key, i)),
                                      key=key)
        na = eqx.tree_at(lambda a: (a.query, a.key, a.value, a.output), na, (sm.query, sm.key, sm.value, sm.output))
        blocks.append(eqx.tree_at(lambda b: b.attention, block, na))
    return eqx.tree_at(lambda m: m.blocks, model, tuple(blocks))


def normalisers(q, k, fm):
    """Softmax normaliser and astrocyte response for every token of one head: two (L,) arrays."""
    L = q.shape[0]
    causal = jnp.tril(jnp.ones((L, L), bool))
    exact = jnp.sum(jnp.where(causal, jnp.exp(q @ k.T), 0.0), axis=-1)
    phi_q, phi_k = fm(q), fm(k)
    astro = jnp.sum(phi_q * jnp.cumsum(phi_k, axis=0), axis=-1)  # phi(q_t) . g_t,  g_t = sum_{tau<=t} phi(k_tau)
    return exact, astro


def rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny budget (CI smoke test)")
    parser.add_argument("--run-dir", default=None, help="a trained softmax charlm run (trained here if empty)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    quick = args.quick
    out_path = Path(args.out) if args.out else RESULTS_DIR / "fidelity.json"
    run_dir = Path(args.run_dir) if args.run_dir else out_path.parent / ("fidelity-run-quick" if quick else "fidelity-run")
    config, task, model = softmax_model(run_dir, quick)

    feature_counts = [100, 1000] if quick else [100, 300, 1000, 3000, 10_000, 30_000, 100_000]
    read_times = [1e-3, 1.0] if quick else [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    draws = 1 if quick else 3
    batch = task.batch("eval", 1, seed=123)
    qkv = heads_qkv(model, jnp.asarray(batch.inputs[0]))
    key = jax.random.PRNGKey(0)

    # 2. Normalisers and head outputs, per layer and head.
    rows, curves = [], {}
    for M in feature_counts:
        errs, corrs, out_eq, out_ode = [], [], [], {t: [] for t in read_times}
        for d in range(draws):
            for layer, (Q, K, V) in enumerate(qkv):
                fm = PositiveRandomFeatures(Q.shape[-1], M, key=jax.random.fold_in(key, 1000 * d + layer))
                for h in range(Q.shape[0]):
                    exact, astro = normalisers(Q[h], K[h], fm)
                    errs.append(float(jnp.median(jnp.abs(astro - exact) / exact)))
                    corrs.append(float(np.corrcoef(np.asarray(astro), np.asarray(exact))[0, 1]))
                    if d == 0 and layer == 0 and h == 0:
                        curves[M] = dict(softmax=np.asarray(exact).tolist(), astrocyte=np.asarray(astro).tolist())
                    head = softmax_attention(Q[h], K[h], V[h])
                    phi_q, phi_k = fm(Q[h]), fm(K[h])
                    out_eq.append(rel(na_attention(phi_q, phi_k, V[h], NAParams(), mode="equilibrium"), head))
                    if M <= 30_000:
                        for t in read_times:
                            p = NAParams(tau_s=0.01 / M, t_read=t)
                            out_ode[t].append(rel(na_attention(phi_q, phi_k, V[h], p), head))
        row = dict(M=M, normaliser_median_relative_error=float(np.mean(errs)),
                   normaliser_correlation=float(np.mean(corrs)), normaliser_correlation_min=float(np.min(corrs)),
                   output_relative_error_equilibrium=float(np.mean(out_eq)),
                   output_relative_error_ode={str(t): float(np.mean(v)) for t, v in out_ode.items() if v})
        rows.append(row)
        print(f"M={M:>6}: normaliser error {row['normaliser_median_relative_error']:.3%} (median over tokens, "
              f"mean over heads), correlation {row['normaliser_correlation']:.4f}; head outputs vs softmax "
              f"{row['output_relative_error_equilibrium']:.3f} at equilibrium")

    # 3. Downstream bits per character with transferred heads.
    eval_batches = [task.batch("eval", 8, seed=1000 + i) for i in range(1 if quick else 4)]

    def bpc(m):
        return float(np.mean([bits_per_char(m.batched(jnp.asarray(b.inputs)), b) for b in eval_batches]))

    baseline = bpc(model)
    downstream = []
    for M in ([100, 1000] if quick else [100, 1000, 10_000]):
        for mode, t in [("equilibrium", None)] + [("ode", t) for t in read_times]:
            params = NAParams(tau_s=0.01 / M, t_read=1.0 if t is None else t)
            value = bpc(transferred(model, M, params, mode, key=key))
            downstream.append(dict(M=M, mode=mode, t_read=t, bits_per_char=value))
            print(f"transferred heads M={M:>6} {mode:<11} t_read={t}: {value:.3f} bits/char (softmax {baseline:.3f})")

    results = dict(config=dict(train=config.to_dict() if hasattr(config, "to_dict") else repr(config),
                               sequence_length=int(batch.inputs.shape[1]), feature_draws=draws,
                               read_times=read_times, feature_counts=feature_counts, params_ode="tau_s = 0.01/M"),
                   machine=machine_info(), normalisers=rows, softmax_bits_per_char=baseline,
                   downstream=downstream, curves={str(k): v for k, v in curves.items()})
    path = write_json(results, out_path, "fidelity.json")
    _plot(results, path.with_suffix(".png"))
    print(f"wrote {path}")
    return results


def _plot(results, path):
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    curves = results["curves"]
    for ax, M in zip(axes[:2], (sorted(curves, key=int)[0], sorted(curves, key=int)[-1])):
        ax.plot(curves[M]["softmax"], label=r"softmax $\sum_\tau e^{q_t\cdot k_\tau}$", color="k")
        ax.plot(curves[M]["astrocyte"], label=r"astrocyte $\phi(q_t)\cdot\sum_\tau\phi(k_\tau)$", alpha=0.8)
        ax.set(title=f"layer 1, head 1, M = {int(M):,}", xlabel="token t", yscale="log")
        ax.legend()
    ds = results["downstream"]
    for M in sorted({d["M"] for d in ds}):
        pts = [(d["t_read"], d["bits_per_char"]) for d in ds if d["M"] == M and d["mode"] == "ode"]
        line, = axes[2].plot(*zip(*pts), marker="o", label=f"ODE, M={M:,}")
        eq = [d["bits_per_char"] for d in ds if d["M"] == M and d["mode"] == "equilibrium"][0]
        axes[2].axhline(eq, color=line.get_color(), linestyle=":", linewidth=1)
    axes[2].axhline(results["softmax_bits_per_char"], color="k", label="softmax (trained)")
    axes[2].set(xscale="log", xlabel="read duration $T_r$", ylabel="bits per character",
                title="transferred heads (dotted: equilibrium)")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
