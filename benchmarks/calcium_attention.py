"""How close does biophysical astrocyte calcium get to attention?

For each calcium model (the paper's abstract diffusive astrocyte, G-ChI, Li–Rinzel) inside the attention block
(`astroformer._head._calcium_read.na_attention_calcium`), over a grid of drive gains and read durations T_r, the
relative error of the block's output from

- the random-feature equilibrium x* (`na_attention(mode="equilibrium")`, what the abstract block converges to),
- softmax attention (what x* approximates as M grows),

as is (`rel_*`), after the best single scalar rescaling of the whole output (`global_*`: what a trained
`rate_max` can absorb, so it measures how well calcium tracks the denominator from query to query), and after
the best per-query rescaling (`shape_*`: the error left in the *direction* of each output once the
normaliser's size is forgiven). The abstract block has no
drive gain: its row is repeated across the gain axis. One causal head, positive random features.

    python -m benchmarks.calcium_attention [--quick]

Writes `benchmarks/results/calcium_attention.json` and `.png`. Training the calcium parameters end to end
is `benchmarks/calcium_training.py`.
"""

import argparse
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import astroformer as af
from astroformer._head._calcium_read import default_coupling, na_attention_calcium
from astroformer.calcium import GChI, LiRinzel

from ._common import RESULTS_DIR, machine_info, pyplot, write_json

GAIN_FACTORS = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
READ_TIMES = (0.1, 0.3, 1.0, 3.0)
QUICK_GAIN_FACTORS = (0.1, 1.0, 3.0)
MAX_STEPS = 2**17
QUICK_READ_TIMES = (0.3, 1.0, 3.0)


def problem(L, D, M, N, seed=0):
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(seed), 4)
    q = jax.random.normal(k1, (L, D)) * D**-0.25
    k = jax.random.normal(k2, (L, D)) * D**-0.25
    v = jax.random.normal(k3, (L, N))
    features = af.PositiveRandomFeatures(D, M, key=k4)
    return q, k, v, features(q), features(k)


def errors(x, ref):
    """Relative Frobenius error; the same after the best single scale alpha = <x, ref>/|x|^2 (what a trained
    `rate_max` can absorb); and after the best per-query scale alpha_t = <x_t, ref_t>/|x_t|^2."""
    norm = jnp.linalg.norm(ref)
    rel = jnp.linalg.norm(x - ref) / norm
    alpha = jnp.sum(x * ref) / jnp.maximum(jnp.sum(x * x), 1e-30)
    glob = jnp.linalg.norm(alpha * x - ref) / norm
    alpha_t = jnp.sum(x * ref, -1, keepdims=True) / jnp.maximum(jnp.sum(x * x, -1, keepdims=True), 1e-30)
    shape = jnp.linalg.norm(alpha_t * x - ref) / norm
    return rel, glob, shape


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small grid and sizes (about a minute)")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/calcium_attention.json)")
    args = parser.parse_args(argv)
    quick = args.quick
    L, D, M, N = (16, 8, 32, 4) if quick else (32, 8, 64, 8)
    gain_factors = QUICK_GAIN_FACTORS if quick else GAIN_FACTORS
    read_times = QUICK_READ_TIMES if quick else READ_TIMES

    q, k, v, phi_q, phi_k = problem(L, D, M, N)
    x_eq = af.na_attention(phi_q, phi_k, v, af.NAParams(), mode="equilibrium")
    x_soft = af.softmax_attention(q, k, v, causal=True)
    eq_vs_softmax = float(jnp.linalg.norm(x_eq - x_soft) / jnp.linalg.norm(x_soft))
    print(f"L={L} D={D} M={M} N={N}; random-feature equilibrium vs softmax: {eq_vs_softmax:.3f}")

    results = {
        "config": dict(
            L=L,
            D=D,
            M=M,
            N=N,
            causal=True,
            quick=quick,
            feature_map="PositiveRandomFeatures",
            params="NAParams() defaults with t_read varied",
            read_times=list(read_times),
            gain_factors=list(gain_factors),
        ),
        "equilibrium_vs_softmax": eq_vs_softmax,
        "models": {},
    }

    models = {"abstract": None, "GChI": GChI(), "LiRinzel": LiRinzel()}
    for name, model in models.items():
        start = time.perf_counter()
        if model is None:
            base_gain = None
            gains = [float("nan")] * len(gain_factors)

            @jax.jit
            def run(t_read, gain):
                del gain
                return af.na_attention(phi_q, phi_k, v, af.NAParams(t_read=t_read), mode="ode")
        else:
            base = default_coupling(model)
            base_gain = float(base.gain)
            gains = [base_gain * f for f in gain_factors]

            @eqx.filter_jit
            def run(t_read, gain, model=model, base=base):
                coupling = eqx.tree_at(lambda c: c.gain, base, gain)
                return na_attention_calcium(
                    phi_q, phi_k, v, af.NAParams(t_read=t_read), model, coupling=coupling, max_steps=MAX_STEPS
                )

        grid = {
            key: np.full((len(gain_factors), len(read_times)), np.nan)
            for key in (
                "rel_eq",
                "global_eq",
                "shape_eq",
                "rel_softmax",
                "global_softmax",
                "shape_softmax",
                "row_scale",
            )
        }
        for a, gain in enumerate(gain_factors if model is None else gains):
            for b, t_read in enumerate(read_times):
                if model is None and a > 0:
                    for key in grid:
                        grid[key][a, b] = grid[key][0, b]
                    continue
                try:
                    x = run(jnp.asarray(t_read), jnp.asarray(gain))
                    jax.block_until_ready(x)
                except Exception as error:  # a stiff corner that runs out of steps: recorded as NaN
                    print(f"  {name} gain {gain:g} T_r {t_read}: solver failed ({type(error).__name__})")
                    continue
                for ref_name, ref in (("eq", x_eq), ("softmax", x_soft)):
                    for kind, err in zip(("rel", "global", "shape"), errors(x, ref)):
                        grid[f"{kind}_{ref_name}"][a, b] = float(err)
                # Median over queries of |x_t| / |x*_t|: 1 when the normaliser has the right size.
                grid["row_scale"][a, b] = float(
                    jnp.median(jnp.linalg.norm(x, axis=-1) / jnp.linalg.norm(x_eq, axis=-1))
                )
        seconds = time.perf_counter() - start
        results["models"][name] = {
            "gains": gains,
            "base_gain": base_gain,
            "seconds": seconds,
            **{key: val.tolist() for key, val in grid.items()},
        }
        best = np.unravel_index(np.nanargmin(grid["rel_eq"]), grid["rel_eq"].shape)
        print(
            f"{name}: {seconds:.1f} s; best rel. error vs equilibrium {grid['rel_eq'][best]:.3f} "
            f"(gain factor {gain_factors[best[0]]}, T_r {read_times[best[1]]}); "
            f"one-scale-fitted {np.nanmin(grid['global_eq']):.3f} (best cell)"
        )
        for a, f in enumerate(gain_factors):
            print(
                f"  gain x{f:<5} rel_eq "
                + " ".join(f"{e:8.3f}" for e in grid["rel_eq"][a])
                + " | global_eq "
                + " ".join(f"{e:6.3f}" for e in grid["global_eq"][a])
                + " | shape_eq "
                + " ".join(f"{e:6.3f}" for e in grid["shape_eq"][a])
                + " | rel_softmax "
                + " ".join(f"{e:8.3f}" for e in grid["rel_softmax"][a])
            )

    results["machine"] = machine_info()
    path = write_json(results, args.out or RESULTS_DIR / "calcium_attention.json")
    figure(results, path.with_suffix(".png"))
    print(f"wrote {path} and calcium_attention.png")
    return results


def figure(results, path):
    plt = pyplot()

    cfg = results["config"]
    names = list(results["models"])
    panels = (
        ("rel_eq", "vs equilibrium"),
        ("global_eq", "vs equilibrium, one scale fitted"),
        ("shape_eq", "vs equilibrium, per-query scale"),
        ("rel_softmax", "vs softmax"),
    )
    fig, axes = plt.subplots(len(names), len(panels), figsize=(4.2 * len(panels), 3.2 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        res = results["models"][name]
        for c, (key, title) in enumerate(panels):
            ax = axes[r, c]
            data = np.log10(np.maximum(np.asarray(res[key], float), 1e-8))
            im = ax.imshow(data, origin="lower", aspect="auto", cmap="viridis", vmin=-4, vmax=1)
            ax.set_xticks(range(len(cfg["read_times"])), [str(t) for t in cfg["read_times"]])
            ax.set_yticks(range(len(cfg["gain_factors"])), [f"x{f}" for f in cfg["gain_factors"]])
            for a in range(data.shape[0]):
                for b in range(data.shape[1]):
                    ax.text(b, a, f"{10 ** data[a, b]:.2g}", ha="center", va="center", fontsize=7, color="w")
            ax.set_title(f"{name}: {title}", fontsize=9)
            ax.set_xlabel("read time T_r")
            if c == 0:
                unit = {"GChI": "mM", "LiRinzel": "µM"}.get(name, "")
                base = res["base_gain"]
                ax.set_ylabel("drive gain" + (f" (x {base:g} {unit})" if base else " (none)"))
            fig.colorbar(im, ax=ax, label="log10 relative error")
    fig.suptitle(f"Calcium astrocytes in the attention block (L={cfg['L']}, M={cfg['M']}, causal)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
