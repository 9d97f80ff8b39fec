"""Recall capacity: MQAR accuracy against the number of key-value pairs, for every attention kind and M.

Every kind trains the same `Transformer` (sizes, seed, optimiser, steps and batch) on multi-query associative
recall (`astroformer.tasks.MQAR`) with `num_kv_pairs` pairs in sequences of `--seq-len` tokens; the only
difference between runs is the attention: softmax, linear (elu+1), and the neuron–astrocyte block at
equilibrium (`na-equilibrium`) and simulated (`na-ode`) with M feature neurons per head. Each configuration is
trained with several seeds; the JSON holds every run (final eval accuracy on `--eval-batches` held-out
batches, eval loss, wall time, tokens/s) and, per configuration, the mean and spread over seeds. The figure
is Zoology's: accuracy against the number of pairs, one line per kind and M.

na-ode costs more per step than its closed form; it runs on the subset given by `--ode-pairs` and
`--ode-features`, and the JSON reports, on that subset, how far na-equilibrium's accuracy predicts it.

Results are appended run by run to the JSON (`--out`), and runs already there are skipped, so an interrupted
sweep continues where it stopped. The README's table comes from `benchmarks/results/recall.json`:

    python -m benchmarks.recall                 # the committed grid, sized for a 2-core CPU (about 2 h there)
    python -m benchmarks.recall --seeds 3 --pairs 4 8 16 32 --seq-len 128 --features 16 64 256 1024
                                                # a fuller grid (a GPU or a quiet machine)
    python -m benchmarks.recall --quick         # 2 tiny runs, for the smoke test
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from astroformer.training import TrainConfig, evaluate, read_metrics, train

from ._common import RESULTS_DIR, machine_info, pyplot, write_json

NA_KINDS = ("na-equilibrium", "na-ode")


def make_config(kind: str, pairs: int, features: int | None, seed: int, args, run_dir: str) -> TrainConfig:
    """The run's `TrainConfig`: identical for every kind except `attention` (and M for the NA kinds)."""
    return TrainConfig(
        task="mqar",
        task_kwargs={"vocab_size": args.vocab_size, "seq_len": args.seq_len, "num_kv_pairs": pairs},
        attention=kind,
        d_model=args.d_model,
        num_layers=args.layers,
        num_heads=args.heads,
        num_features=features or 32,
        short_conv=args.short_conv,
        read_steps=args.read_steps,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup=max(1, args.steps // 10),
        eval_every=args.steps,
        eval_batches=1,
        checkpoint_every=0,
        seed=seed,
        run_dir=run_dir,
    )


def run_one(kind: str, pairs: int, features: int | None, seed: int, args, root: str) -> dict:
    run_dir = f"{root}/{kind}-{pairs}-{features}-{seed}"
    config = make_config(kind, pairs, features, seed, args, run_dir)
    start = time.perf_counter()
    result = train(config, progress=False)
    wall = time.perf_counter() - start
    from astroformer.training import build_task

    task = build_task(config)
    final = evaluate(result.model, task, batch_size=args.batch_size, num_batches=args.eval_batches, seed=10_000)
    records = [r for r in read_metrics(run_dir) if r["kind"] == "train"]
    rates = [r["tokens_per_s"] for r in records if r["tokens_per_s"] is not None]
    return {
        "attention": kind,
        "num_kv_pairs": pairs,
        "num_features": features,
        "seed": seed,
        "accuracy": final["accuracy"],
        "eval_loss": final["loss"],
        "last_train_loss": records[-1]["loss"],
        "tokens_per_s": statistics.median(rates) if rates else None,
        "wall_s": wall,
    }


def configurations(args) -> list[tuple[str, int, int | None, int]]:
    """Every run of the grid, seed by seed (all of seed 0 first, so a sweep cut short covers the whole grid)."""
    runs = []
    for seed in range(args.seeds):
        for pairs in args.pairs:
            for kind in args.kinds:
                if kind == "na-ode":
                    if pairs not in args.ode_pairs:
                        continue
                    feature_list = args.ode_features
                elif kind == "na-equilibrium":
                    feature_list = args.features
                else:
                    feature_list = [None]
                for features in feature_list:
                    runs.append((kind, pairs, features, seed))
    return runs


def _label(kind: str, features: int | None) -> str:
    return kind if features is None else f"{kind} M={features}"


def summarise(results: list[dict]) -> dict:
    """Per (kind, M, pairs): mean, min, max and the seeds' accuracies; na-ode vs na-equilibrium on the subset;
    the smallest M at which each NA kind comes within 5 points of softmax, per number of pairs."""
    groups: dict[tuple, list[float]] = {}
    for r in results:
        groups.setdefault((r["attention"], r["num_features"], r["num_kv_pairs"]), []).append(r["accuracy"])
    table = [
        {
            "attention": k,
            "num_features": m,
            "num_kv_pairs": p,
            "mean": statistics.fmean(a),
            "min": min(a),
            "max": max(a),
            "accuracies": a,
        }
        for (k, m, p), a in sorted(groups.items(), key=str)
    ]
    mean = {(row["attention"], row["num_features"], row["num_kv_pairs"]): row["mean"] for row in table}
    ode_vs_eq = []
    for (kind, m, p), value in mean.items():
        if kind == "na-ode" and ("na-equilibrium", m, p) in mean:
            ode_vs_eq.append(
                {
                    "num_features": m,
                    "num_kv_pairs": p,
                    "na_ode": value,
                    "na_equilibrium": mean[("na-equilibrium", m, p)],
                    "difference": value - mean[("na-equilibrium", m, p)],
                }
            )
    smallest = {}
    for kind in NA_KINDS:
        for p in sorted({p for (_, _, p) in mean}):
            soft = mean.get(("softmax", None, p))
            if soft is None:
                continue
            ms = sorted(m for (k, m, q) in mean if k == kind and q == p)
            within = [m for m in ms if mean[(kind, m, p)] >= soft - 0.05]
            smallest.setdefault(kind, {})[str(p)] = {
                "softmax": soft,
                "smallest_M_within_5_points": within[0] if within else None,
                "best": max((mean[(kind, m, p)] for m in ms), default=None),
            }
    return {"table": table, "na_ode_vs_na_equilibrium": ode_vs_eq, "within_5_points_of_softmax": smallest}


def plot(results: list[dict], path: Path) -> None:
    plt = pyplot()
    summary = summarise(results)["table"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[tuple, list[dict]] = {}
    for row in summary:
        series.setdefault((row["attention"], row["num_features"]), []).append(row)
    styles = {"softmax": ("k", "-"), "linear": ("tab:gray", "--"), "na-equilibrium": (None, "-"), "na-ode": (None, ":")}
    cmap = plt.get_cmap("viridis")
    all_m = sorted({m for (_, m) in series if m is not None})
    for (kind, m), rows in sorted(series.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        rows = sorted(rows, key=lambda r: r["num_kv_pairs"])
        xs = [r["num_kv_pairs"] for r in rows]
        color, ls = styles.get(kind, (None, "-"))
        if color is None:
            color = cmap(all_m.index(m) / max(1, len(all_m) - 1) * 0.9)
        ax.errorbar(
            xs,
            [r["mean"] for r in rows],
            yerr=[[r["mean"] - r["min"] for r in rows], [r["max"] - r["mean"] for r in rows]],
            color=color,
            ls=ls,
            marker="o" if kind != "na-ode" else "s",
            ms=4,
            capsize=2,
            label=_label(kind, m),
        )
    ax.set(
        xscale="log",
        xlabel="key-value pairs",
        ylabel="MQAR eval accuracy",
        ylim=(0, 1.02),
        title="Recall capacity (mean over seeds, bars: min-max)",
    )
    ax.set_xticks(
        sorted({r["num_kv_pairs"] for r in results}), [str(p) for p in sorted({r["num_kv_pairs"] for r in results})]
    )
    ax.minorticks_off()
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two tiny runs (softmax, na-equilibrium M=16)")
    parser.add_argument("--pairs", type=int, nargs="+", default=[4, 16])
    parser.add_argument(
        "--kinds",
        nargs="+",
        default=["softmax", "linear", "na-equilibrium", "na-ode"],
        choices=["softmax", "linear", "na-equilibrium", "na-ode"],
    )
    parser.add_argument("--features", type=int, nargs="+", default=[16, 64, 256], help="M for na-equilibrium")
    parser.add_argument("--ode-pairs", type=int, nargs="+", default=[4], help="pairs at which na-ode runs")
    parser.add_argument("--ode-features", type=int, nargs="+", default=[64, 256], help="M at which na-ode runs")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--vocab-size", type=int, default=128)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--short-conv", type=int, default=2)
    parser.add_argument("--read-steps", type=int, default=8)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", "--lr", type=float, default=3e-3)
    parser.add_argument("--eval-batches", type=int, default=8)
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/recall[_quick].json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.kinds, args.features, args.ode_pairs, args.seeds = (
            [2],
            ["softmax", "na-equilibrium"],
            [16],
            [],
            1,
        )
        args.seq_len, args.vocab_size, args.d_model, args.layers, args.heads = 16, 16, 32, 1, 2
        args.steps, args.batch_size = 200, 32
        args.eval_batches = 4
    name = "recall_quick" if args.quick else "recall"
    out = Path(args.out) if args.out else RESULTS_DIR / f"{name}.json"
    settings = {k: v for k, v in vars(args).items() if k not in ("out",)}
    results: list[dict] = []
    # Runs of an earlier sweep with the same training settings are kept (the grid and the seeds may grow).
    grid = ("pairs", "kinds", "features", "ode_pairs", "ode_features", "seeds")
    same = lambda a, b: {k: v for k, v in a.items() if k not in grid} == {k: v for k, v in b.items() if k not in grid}  # noqa: E731
    if out.exists():
        previous = json.loads(out.read_text())
        if same(previous.get("config", {}), settings):
            results = previous["results"]
            print(f"continuing {out}: {len(results)} runs already done")
        else:
            print(f"{out} holds another configuration: starting afresh (it is overwritten when the first run ends)")
    done = {(r["attention"], r["num_kv_pairs"], r["num_features"], r["seed"]) for r in results}
    info = machine_info()
    with tempfile.TemporaryDirectory() as root:
        for kind, pairs, features, seed in configurations(args):
            if (kind, pairs, features, seed) in done:
                continue
            r = run_one(kind, pairs, features, seed, args, root)
            results.append(r)
            print(
                f"pairs {pairs:3d}  {_label(kind, features):22s} seed {seed}: accuracy {r['accuracy']:.3f}  "
                f"({r['wall_s']:.0f} s)",
                flush=True,
            )
            write_json({"machine": info, "config": settings, "results": results, "summary": summarise(results)}, out)
    data = {"machine": info, "config": settings, "results": results, "summary": summarise(results)}
    write_json(data, out)
    plot(results, out.with_suffix(".png"))
    for kind, per_pairs in data["summary"]["within_5_points_of_softmax"].items():
        for p, s in per_pairs.items():
            print(
                f"{kind:15s} pairs {p:>3s}: softmax {s['softmax']:.3f}, best {s['best']}, smallest M within 5 "
                f"points: {s['smallest_M_within_5_points']}"
            )
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
