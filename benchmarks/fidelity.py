"""Fidelity — the paper's experiment, on a transformer that astroformer trains itself, with every feature map.

1. Train (or load) a small softmax character model on the default corpus.
2. For every head of it and one validation sequence, compare token by token the astrocyte response
   $\\phi(q_t)\\cdot\\sum_{\\tau\\le t}\\phi(k_\\tau)$ with the softmax normaliser $\\sum_{\\tau\\le t} e^{q_t\\cdot k_\\tau}$
   (median relative error, correlation, and the closed-form relative variance of the estimate), the attention
   weights (total-variation distance to softmax's) and the head outputs at equilibrium, for the feature maps

   - `prf`: the paper's positive random features (FAVOR+);
   - `orthogonal`: the same with orthogonal directions;
   - `oprf`, `orthogonal-oprf`: optimal positive random features (FAVOR++), A per head from `fit_A` on
     training text;
   - `learned`: feature neurons distilled per head on the heads' softmax weights (`astroformer distill`).

3. The downstream question: the model's bits per character when every softmax head is replaced by its
   neuron–astrocyte head (weights transferred), at equilibrium and with simulated reads (na-ode, T_r = 1).

    python -m benchmarks.fidelity [--quick] [--run-dir DIR] [--distilled DIR ...] [--out PATH]

`--distilled` names run directories written by `astroformer distill --run-dir DIR` (default: every
`<run-dir>-distilled-*` next to the run directory; in `--quick` mode one tiny distillation is run here).

References: Kozachkov, Kastanenka & Krotov, PNAS 120:e2219150120 (2023), Fig. 3; Likhosherstov et al.,
NeurIPS 2022 (OPRF); Choromanski et al., ICLR 2021; Zhang et al., ICLR 2024 (Hedgehog).
"""

import argparse
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from astroformer import (
    HeadwiseFeatures,
    NAParams,
    NeuronAstrocyteAttention,
    OptimalPositiveRandomFeatures,
    PositiveRandomFeatures,
    fit_A,
    softmax_attention,
)
from astroformer._attention_weights import (
    kernel_weights,
    softmax_weights,
    total_variation,
)
from astroformer._features._oprf import log_relative_second_moment
from astroformer.tasks import bits_per_char
from astroformer.training import TrainConfig, load_run, train
from astroformer.training._distill import distill, layer_qkv

from ._common import RESULTS_DIR, machine_info, pyplot, write_json

RANDOM_MAPS = ("prf", "orthogonal", "oprf", "orthogonal-oprf")


def softmax_model(run_dir: Path, quick: bool):
    """Load the softmax character model in `run_dir`, training it first if the directory has none."""
    if not (run_dir / "config.json").exists():
        config = TrainConfig(
            task="charlm",
            attention="softmax",
            d_model=64,
            num_layers=2,
            num_heads=4,
            steps=40 if quick else 1500,
            batch_size=16,
            eval_every=20 if quick else 250,
            checkpoint_every=0,
            run_dir=str(run_dir),
            seed=0,
        )
        train(config, progress=not quick)
    config, task, model, _ = load_run(run_dir)
    if config.attention != "softmax":
        raise ValueError(f"--run-dir: expected a softmax run, got attention={config.attention!r}")
    return config, task, model


def random_map(name: str, D: int, M: int, A_heads, *, key):
    """The feature map `name` for a layer: shared by its heads (PRF, orthogonal), or per head with its own A."""
    if name in ("prf", "orthogonal"):
        return PositiveRandomFeatures(D, M, orthogonal=name == "orthogonal", key=key)
    return HeadwiseFeatures.stack(
        [
            OptimalPositiveRandomFeatures(D, M, A=float(A), orthogonal=name == "orthogonal-oprf", key=k)
            for A, k in zip(A_heads, jax.random.split(key, len(A_heads)))
        ]
    )


def transferred(model, maps, params: NAParams, mode: str):
    """The model with every softmax layer replaced by a neuron–astrocyte layer with the same weights and the
    feature map `maps[layer]`."""
    blocks = []
    for i, block in enumerate(model.blocks):
        sm = block.attention
        na = NeuronAstrocyteAttention(
            sm.query.weight.shape[0],
            sm.num_heads,
            mode=mode,
            params=params,
            feature_map=maps[i],
            key=jax.random.PRNGKey(0),
        )
        na = eqx.tree_at(lambda a: (a.query, a.key, a.value, a.output), na, (sm.query, sm.key, sm.value, sm.output))
        blocks.append(eqx.tree_at(lambda b: b.attention, block, na))
    return eqx.tree_at(lambda m: m.blocks, model, tuple(blocks))


@jax.jit
def _head_metrics(q, k, v, phi_q, phi_k):
    """Per token of one head: exact and estimated normalisers, TV distance of the weights, and the relative
    error of the equilibrium output."""
    L = q.shape[0]
    causal = jnp.tril(jnp.ones((L, L), bool))
    exact = jnp.sum(jnp.where(causal, jnp.exp(q @ k.T), 0.0), axis=-1)
    astro = jnp.sum(phi_q * jnp.cumsum(phi_k, axis=0), axis=-1)  # phi(q_t) . g_t,  g_t = sum_{tau<=t} phi(k_tau)
    weights = kernel_weights(phi_q, phi_k)
    tv = total_variation(weights, softmax_weights(q, k))
    out = weights @ v
    ref = softmax_attention(q, k, v)
    out_err = jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref)
    return exact, astro, tv, out_err


@jax.jit
def _closed_form_relative_variance(q, k, A):
    r"""Per token: Var[estimate]/normaliser^2 of one feature (multiply by 1/M for M i.i.d. features):
    $\sum_\tau e^{2q\cdot k_\tau}(R(A, s_{t\tau}) - 1) / (\sum_\tau e^{q\cdot k_\tau})^2$."""
    L, D = q.shape
    causal = jnp.tril(jnp.ones((L, L), bool))
    logits = q @ k.T
    s = jnp.sum((q[:, None] + k[None]) ** 2, axis=-1)
    log_r = log_relative_second_moment(A, s, D)
    log_excess = jnp.where(log_r > 30, log_r, jnp.log(jnp.expm1(jnp.maximum(log_r, 1e-30))))
    num = jax.nn.logsumexp(jnp.where(causal, 2 * logits + log_excess, -jnp.inf), axis=-1)
    den = 2 * jax.nn.logsumexp(jnp.where(causal, logits, -jnp.inf), axis=-1)
    return jnp.exp(num - den)


def _summarise(per_head):
    """Aggregate lists of per-head arrays into the row's statistics."""
    errs = [float(np.median(np.abs(a - e) / e)) for e, a in zip(per_head["exact"], per_head["astro"])]
    corrs = [
        float(np.corrcoef(np.asarray(a), np.asarray(e))[0, 1]) if np.std(np.asarray(a)) > 0 else 0.0
        for e, a in zip(per_head["exact"], per_head["astro"])
    ]
    sq = np.concatenate([np.asarray((a / e - 1) ** 2) for e, a in zip(per_head["exact"], per_head["astro"])])
    return dict(
        normaliser_median_relative_error=float(np.mean(errs)),
        normaliser_correlation=float(np.mean(corrs)),
        normaliser_correlation_min=float(np.min(corrs)),
        normaliser_median_squared_relative_error=float(np.median(sq)),
        attention_tv_median=float(np.median(np.concatenate(per_head["tv"]))),
        attention_tv_mean=float(np.mean(np.concatenate(per_head["tv"]))),
        output_relative_error_equilibrium=float(np.mean(per_head["out"])),
    )


def _distilled_runs(args, run_dir: Path, quick: bool):
    if args.distilled:
        return [Path(p) for p in args.distilled]
    if quick:
        out = run_dir.parent / (run_dir.name + "-distilled-quick")
        distill(
            run_dir, out, num_features=16, attention="na-ode", steps=10, batches=1, evaluate_model=False, overwrite=True
        )
        return [out]
    return sorted(
        run_dir.parent.glob(run_dir.name + "-distilled-*"),
        key=lambda p: TrainConfig.load(p / "config.json").num_features,
    )


def _accumulate(acc: dict, Q, K, V, phi) -> tuple:
    """Append one head's metrics (`_head_metrics` with feature map `phi`) to `acc`; return its
    (exact, astrocyte) normalisers for the curves."""
    exact, astro, tv, out_err = _head_metrics(Q, K, V, phi(Q), phi(K))
    for k_, v_ in zip(("exact", "astro", "tv"), (exact, astro, tv)):
        acc[k_].append(np.asarray(v_))
    acc["out"].append(float(out_err))
    return exact, astro


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny budget (CI smoke test)")
    parser.add_argument("--run-dir", default=None, help="a trained softmax charlm run (trained here if empty)")
    parser.add_argument("--distilled", nargs="*", default=None, help="distilled run directories (learned maps)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    quick = args.quick
    out_path = Path(args.out) if args.out else RESULTS_DIR / "fidelity.json"
    run_dir = (
        Path(args.run_dir) if args.run_dir else out_path.parent / ("fidelity-run-quick" if quick else "fidelity-run")
    )
    config, task, model = softmax_model(run_dir, quick)
    machine = machine_info()

    # Sized for a shared 2-core CPU: up to 16384 feature neurons (not 10^5), 2 draws up to 4096, 1 above.
    feature_counts = [16, 256] if quick else [16, 64, 256, 1024, 4096, 16384]
    draws = 1 if quick else 2
    batch = task.batch("eval", 1, seed=123)
    qkv = [tuple(a[:, 0] for a in layer) for layer in layer_qkv(model, jnp.asarray(batch.inputs))]
    # A per head for OPRF, from training text (never the evaluation sequence): the median of fit_A over sequences.
    train_tokens = jnp.asarray(task.batch("train", 2 if quick else 8, seed=77).inputs)
    train_qkv = layer_qkv(model, train_tokens)
    A_heads = [
        [float(np.median([fit_A(Q[h, b], K[h, b]) for b in range(Q.shape[1])])) for h in range(Q.shape[0])]
        for Q, K, _ in train_qkv
    ]
    print("OPRF A per layer and head (fit_A on training text):", np.round(A_heads, 3).tolist(), flush=True)
    key = jax.random.PRNGKey(0)

    # 2. Normalisers, weights and head outputs, per map, M, layer and head.
    rows, curves = [], {}
    closed_form = {}
    for name in RANDOM_MAPS:
        iid_A = [[0.0] * len(a) for a in A_heads] if name in ("prf", "orthogonal") else A_heads
        per_token = np.concatenate(
            [
                np.asarray(_closed_form_relative_variance(Q[h], K[h], iid_A[layer][h]))
                for layer, (Q, K, _) in enumerate(qkv)
                for h in range(Q.shape[0])
            ]
        )
        closed_form[name] = per_token  # relative variance of the normaliser estimate, times M (i.i.d. directions)
        for M in feature_counts:
            acc = {"exact": [], "astro": [], "tv": [], "out": []}
            for d in range(draws if M <= 1024 else 1):
                for layer, (Q, K, V) in enumerate(qkv):
                    fm = random_map(name, Q.shape[-1], M, A_heads[layer], key=jax.random.fold_in(key, 1000 * d + layer))
                    for h in range(Q.shape[0]):
                        exact, astro = _accumulate(acc, Q[h], K[h], V[h], fm.for_head(h))
                        if d == 0 and layer == 0 and h == 0:
                            curves[f"{name}/{M}"] = dict(
                                softmax=np.asarray(exact).tolist(), astrocyte=np.asarray(astro).tolist()
                            )
            row = dict(
                map=name,
                M=M,
                **_summarise(acc),
                normaliser_closed_form_relative_variance_median=float(np.median(per_token) / M),
            )
            rows.append(row)
            print(
                f"{name:>15} M={M:>6}: normaliser error {row['normaliser_median_relative_error']:.3f}, corr "
                f"{row['normaliser_correlation']:.3f}, closed-form rel. variance (median token) "
                f"{row['normaliser_closed_form_relative_variance_median']:.3g}; weights TV "
                f"{row['attention_tv_median']:.3f}; outputs {row['output_relative_error_equilibrium']:.3f}",
                flush=True,
            )

    # Learned (distilled) maps: the same metrics on the same heads (the teacher's queries and keys).
    distilled = []
    for path in _distilled_runs(args, run_dir, quick):
        dconfig, _, dmodel, _ = load_run(path)
        M = dconfig.num_features
        acc = {"exact": [], "astro": [], "tv": [], "out": []}
        for layer, (Q, K, V) in enumerate(qkv):
            fm = dmodel.blocks[layer].attention.feature_map
            for h in range(Q.shape[0]):
                exact, astro = _accumulate(acc, Q[h], K[h], V[h], fm.for_head(h))
                if layer == 0 and h == 0:
                    curves[f"{dconfig.feature_map}/{M}"] = dict(
                        softmax=np.asarray(exact).tolist(), astrocyte=np.asarray(astro).tolist()
                    )
        row = dict(map=dconfig.feature_map, M=M, run_dir=str(path), **_summarise(acc))
        rows.append(row)
        distilled.append((M, dmodel, path, dconfig.feature_map))
        print(
            f"{dconfig.feature_map:>15} M={M:>6}: normaliser error {row['normaliser_median_relative_error']:.3f}, corr "
            f"{row['normaliser_correlation']:.3f}; weights TV {row['attention_tv_median']:.3f}; outputs "
            f"{row['output_relative_error_equilibrium']:.3f}",
            flush=True,
        )

    # Variance ratio PRF / OPRF on the same heads (closed form, per token, i.i.d. directions), and the M needed for a
    # 10% relative standard deviation of the normaliser (median token): M = v / 0.1^2.
    variance = dict(
        prf_over_oprf_median=float(np.median(closed_form["prf"] / closed_form["oprf"])),
        prf_over_oprf_quartiles=[float(np.quantile(closed_form["prf"] / closed_form["oprf"], q)) for q in (0.25, 0.75)],
        M_for_10pct_relative_std={n: float(np.median(closed_form[n]) / 0.01) for n in ("prf", "oprf")},
    )
    for name in RANDOM_MAPS:
        measured = [(r["M"], r["normaliser_median_relative_error"]) for r in rows if r["map"] == name]
        crossing = next((M for M, e in measured if e <= 0.10), None)
        variance.setdefault("M_for_10pct_median_error_measured", {})[name] = crossing
        empirical = {r["M"]: r["normaliser_median_squared_relative_error"] for r in rows if r["map"] == name}
        variance.setdefault("median_squared_relative_error", {})[name] = empirical
    variance["median_squared_relative_error_prf_over_oprf"] = {
        str(M): variance["median_squared_relative_error"]["prf"][M]
        / variance["median_squared_relative_error"]["oprf"][M]
        for M in feature_counts
    }
    print("variance:", variance, flush=True)

    def save(downstream, baseline, partial):
        results = dict(
            config=dict(
                train=config.to_dict(),
                sequence_length=int(batch.inputs.shape[1]),
                feature_draws=draws,
                feature_draws_above_1024=1,
                feature_counts=feature_counts,
                eval_sequences_downstream=8 * len(eval_batches),
                oprf_A=A_heads,
                params="tau_s = 0.01/M, t_read = 1 (ode)",
            ),
            machine=machine,
            normalisers=rows,
            variance=variance,
            softmax_bits_per_char=baseline,
            downstream=downstream,
            curves=curves,
            partial=partial,
        )
        return write_json(results, out_path, "fidelity.json"), results

    # 3. Downstream bits per character with transferred heads.
    eval_batches = [task.batch("eval", 8, seed=1000 + i) for i in range(1 if quick else 2)]

    def bpc(m):
        return float(np.mean([bits_per_char(m.batched(jnp.asarray(b.inputs)), b) for b in eval_batches]))

    baseline = bpc(model)
    downstream = []
    save(downstream, baseline, True)
    D = model.d_model // model.blocks[0].attention.num_heads
    for M, dmodel, dpath, map_name in distilled:
        maps = [b.attention.feature_map for b in dmodel.blocks]
        for mode in ("equilibrium", "ode"):
            value = bpc(transferred(model, maps, NAParams(tau_s=0.01 / M), mode))
            downstream.append(
                dict(
                    map=map_name,
                    M=M,
                    mode=mode,
                    t_read=1.0,
                    bits_per_char=value,
                    relative_to_softmax=value / baseline - 1,
                    run_dir=str(dpath),
                )
            )
            print(
                f"transferred {map_name:>15} M={M:>5} {mode:<11}: {value:.3f} bits/char (softmax {baseline:.3f}, "
                f"{value / baseline - 1:+.1%}; {dpath.name})",
                flush=True,
            )
            save(downstream, baseline, True)
    for name in RANDOM_MAPS:
        for M in [256] if quick else [256, 4096]:
            maps = [
                random_map(name, D, M, A_heads[i], key=jax.random.fold_in(key, i)) for i in range(len(model.blocks))
            ]
            for mode in ("equilibrium", "ode") if M <= 256 else ("equilibrium",):
                value = bpc(transferred(model, maps, NAParams(tau_s=0.01 / M), mode))
                downstream.append(dict(map=name, M=M, mode=mode, t_read=1.0, bits_per_char=value))
                print(
                    f"transferred {name:>15} M={M:>5} {mode:<11}: {value:.3f} bits/char (softmax {baseline:.3f})",
                    flush=True,
                )
                save(downstream, baseline, True)
    path, results = save(downstream, baseline, False)
    _plot(results, path.with_suffix(".png"))
    print(f"wrote {path}")
    return results


def _plot(results, path):
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
    rows = results["normalisers"]
    names = list(dict.fromkeys(r["map"] for r in rows))
    for name in names:
        pts = sorted((r["M"], r) for r in rows if r["map"] == name)
        Ms = [M for M, _ in pts]
        axes[0].plot(Ms, [r["normaliser_median_relative_error"] for _, r in pts], marker="o", label=name)
        axes[1].plot(Ms, [r["attention_tv_median"] for _, r in pts], marker="o", label=name)
        if not name.startswith("learned"):
            axes[2].plot(
                Ms, [r["normaliser_closed_form_relative_variance_median"] for _, r in pts], marker="o", label=name
            )
    axes[0].axhline(0.1, color="k", linestyle=":", linewidth=1)
    axes[0].set(
        xscale="log",
        yscale="log",
        xlabel="feature neurons M per head",
        ylabel="median |astrocyte - normaliser| / normaliser",
        title="softmax normaliser",
    )
    axes[1].axhline(0.05, color="k", linestyle=":", linewidth=1)
    axes[1].set(
        xscale="log",
        yscale="log",
        xlabel="M",
        ylabel="median total-variation distance",
        title="attention weights vs softmax",
    )
    axes[2].set(
        xscale="log",
        yscale="log",
        xlabel="M",
        ylabel="relative variance (closed form, median token)",
        title="normaliser variance",
    )
    for ax in axes[:3]:
        ax.legend(fontsize=8)
    ds = results["downstream"]
    cells = list(dict.fromkeys((d["map"], d["M"]) for d in ds))
    labels = [f"{name}\nM={M}" for name, M in cells]
    x = np.arange(len(labels))
    for i, mode in enumerate(("equilibrium", "ode")):
        vals = [
            next((d["bits_per_char"] for d in ds if (d["map"], d["M"], d["mode"]) == (*c, mode)), np.nan) for c in cells
        ]
        axes[3].bar(x + (i - 0.5) * 0.4, vals, width=0.4, label=mode)
    axes[3].axhline(results["softmax_bits_per_char"], color="k", label="softmax (trained)")
    axes[3].set_xticks(x, labels, fontsize=6, rotation=90)
    axes[3].set(ylabel="bits per character", title="transferred model", ylim=(0, None))
    axes[3].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
