"""Long context within a memory budget: the character model trained with neuron–astrocyte attention at a
context 4× longer than the longest softmax context that fits the same budget.

Run as ``python -m benchmarks.long_context [--quick] [--budget-mib 64] [--steps 30] [--out PATH]``.

1. The longest context ``L_softmax`` whose softmax train step fits ``--budget-mib`` is found from XLA's
   compiled memory analysis of the train step (`benchmarks.memory.longest_length`: argument + output +
   temporary − alias bytes of `astroformer.training.make_train_step` on the demo model; nothing is guessed).
2. ``L_long = factor · L_softmax`` (default factor 4). The compiled train-step footprints of ``na-equilibrium``
   and ``na-ode`` at ``L_long`` are checked against the same budget (and softmax's, which does not fit, is
   recorded). A kind that does not fit at ``L_long`` gets its own longest context within the budget (the same
   search), and is trained there if that is longer than softmax's (``context_over_softmax`` in the JSON).
3. Softmax at ``L_softmax`` and both neuron–astrocyte kinds at their long context are trained with the public
   `astroformer.training.train` for the same number of steps and sequences per step (so the long-context runs
   see ``factor``× more characters per step; all three use the same memory budget), then evaluated on the
   same number of validation windows of their own context: bits per character = eval loss / ln 2.

The budget (64 MiB) is far below a real machine's memory so that the demonstration trains on a 2-core CPU;
the ratio of contexts is what carries over to larger budgets (softmax's train-step memory grows as L², the
neuron–astrocyte blocks' as L; `benchmarks/memory.py` measures both at 16 GiB). Its cost is dominated by
compiling the na-ode train step (twice: the footprint check and `train`) and by na-ode's steps; the measured
wall time is in the JSON (`total_seconds`, and `seconds` per run). 30 steps of one sequence is an early point
of training: the bits/char compare kinds at equal steps and memory, not converged models.

Output: JSON (``benchmarks/results/long_context.json``) and a figure of the training curves and bits/char
(``long_context.png``).
"""

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

from ._common import RESULTS_DIR, machine_info, pyplot, write_json
from .memory import MIB, compile_train_step, longest_length

LN2 = math.log(2.0)


def demo_config(quick: bool, steps: int | None):
    """The demo model: the default character LM made smaller (1 layer, M=16, 4 read steps, one sequence per step)
    so that long contexts train on a CPU."""
    from astroformer.training import TrainConfig

    if quick:
        base = dict(
            d_model=16,
            num_layers=1,
            num_heads=2,
            num_features=8,
            read_steps=4,
            batch_size=1,
            steps=4,
            warmup=1,
            eval_every=4,
            eval_batches=1,
        )
    else:
        base = dict(
            d_model=64,
            num_layers=1,
            num_heads=4,
            num_features=16,
            read_steps=4,
            batch_size=1,
            steps=30,
            warmup=3,
            eval_every=30,
            eval_batches=8,
        )
    if steps is not None:
        base.update(steps=steps, warmup=max(1, steps // 10), eval_every=steps)
    return TrainConfig(task="charlm", checkpoint_every=0, learning_rate=3e-3, **base)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI smoke test)")
    parser.add_argument("--budget-mib", type=float, help="train-step memory budget in MiB (default 64)")
    parser.add_argument("--factor", type=int, default=4, help="L_long / L_softmax (default 4)")
    parser.add_argument("--steps", type=int, help="optimiser steps per run (default 30)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "long_context.json", help="JSON path")
    parser.add_argument("--run-dir", type=Path, help="where the runs go (default: a temporary directory)")
    args = parser.parse_args(argv)

    from astroformer.training import train

    config = demo_config(args.quick, args.steps)
    budget_mib = args.budget_mib if args.budget_mib is not None else (96.0 if args.quick else 64.0)
    budget = budget_mib * MIB
    results = {
        "benchmark": "long_context",
        "machine": machine_info(),
        "budget_mib": budget_mib,
        "factor": args.factor,
        "config": {k: v for k, v in config.to_dict().items() if k not in ("run_dir", "attention")},
        "footprint": "argument + output + temp - alias bytes of the compiled train step",
    }

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    def footprint(kind, L):
        analysis, seconds = compile_train_step(kind, L, config)
        return analysis["footprint"], seconds

    t0 = time.perf_counter()
    log(f"longest softmax context within {budget_mib:g} MiB:")
    found = longest_length(
        lambda L: footprint("softmax", L),
        budget,
        start=64 if args.quick else 512,
        multiple=16 if args.quick else 64,
        log=log,
    )
    if found["longest"] is None:
        raise SystemExit(f"--budget-mib: no softmax context fits {budget_mib} MiB; expected a larger budget")
    L_softmax = found["longest"]
    L_long = args.factor * L_softmax
    results["softmax_search"] = found
    results["L_softmax"], results["L_long"] = L_softmax, L_long
    fits = {}
    for kind in ("softmax", "na-equilibrium", "na-ode"):
        b, seconds = footprint(kind, L_long)
        fits[kind] = {"L": L_long, "footprint": b, "fits": b <= budget, "compile_s": seconds}
        log(f"  {kind} at L={L_long}: {b / MIB:.1f} MiB ({'fits' if b <= budget else 'does not fit'})")
    results["at_L_long"] = fits
    # A neuron-astrocyte kind that does not fit at L_long is trained at its own longest context within the budget
    # (found the same way as softmax's), so that every kind is shown at a context softmax cannot reach.
    contexts = {"softmax": L_softmax}
    results["own_search"] = {}
    for kind in ("na-equilibrium", "na-ode"):
        if fits[kind]["fits"]:
            contexts[kind] = L_long
            continue
        log(f"longest {kind} context within {budget_mib:g} MiB:")
        own = longest_length(
            lambda L, kind=kind: footprint(kind, L),
            budget,
            start=L_softmax,
            known={L_long: fits[kind]["footprint"]},
            multiple=16 if args.quick else 64,
            log=log,
        )
        results["own_search"][kind] = own
        if own["longest"] is not None and own["longest"] > L_softmax:
            contexts[kind] = own["longest"]
            fits[kind] = {**fits[kind], "trained_at": own["longest"], "footprint_trained": own["footprint_longest"]}
            log(f"  {kind}: trained at L={own['longest']} ({own['longest'] / L_softmax:.2f}x softmax's)")
    results["contexts"] = contexts
    results["context_over_softmax"] = {kind: L / L_softmax for kind, L in contexts.items()}
    results["search_seconds"] = time.perf_counter() - t0
    write_json(results, args.out)

    root = Path(args.run_dir) if args.run_dir else Path(tempfile.mkdtemp(prefix="long_context-"))
    runs = []
    for kind in ("softmax", "na-equilibrium", "na-ode"):
        if kind not in contexts:
            log(f"{kind}: no context longer than softmax's fits the budget: not trained")
            continue
        L = contexts[kind]
        cfg = config.replace(attention=kind, task_kwargs={"seq_len": L}, run_dir=str(root / f"{kind}-{L}"))
        log(f"training {kind} at context {L} ({cfg.steps} steps, batch {cfg.batch_size}) ...")
        start = time.perf_counter()
        res = train(cfg, overwrite=True, progress=False)
        seconds = time.perf_counter() - start
        final = res.evals[-1]
        rec = {
            "attention": kind,
            "context": L,
            "steps": res.step,
            "batch_size": cfg.batch_size,
            "characters_seen": res.step * cfg.batch_size * L,
            "seconds": seconds,
            "train_losses_nats": [loss for _, loss in res.losses],
            "eval_loss_nats": final["loss"],
            "bits_per_char": final["loss"] / LN2,
            "eval_windows": cfg.eval_batches * cfg.batch_size,
        }
        if kind == "softmax":
            rec["footprint"] = found["footprint_longest"]
        else:
            rec["footprint"] = fits[kind].get("footprint_trained", fits[kind]["footprint"])
        runs.append(rec)
        log(f"  {kind}: {rec['bits_per_char']:.3f} bits/char, {seconds:.0f} s")
        results["runs"] = runs
        write_json(results, args.out)
    if not args.run_dir:
        shutil.rmtree(root, ignore_errors=True)
    results["runs"] = runs
    results["total_seconds"] = time.perf_counter() - t0
    path = write_json(results, args.out)
    plot(results, path.with_suffix(".png"))
    log(f"wrote {path} and {path.with_suffix('.png')} ({results['total_seconds']:.0f} s)")
    return results


def plot(results: dict, path: Path) -> None:
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    for run in results["runs"]:
        losses = [x / LN2 for x in run["train_losses_nats"]]
        ax.plot(range(1, len(losses) + 1), losses, label=f"{run['attention']} (context {run['context']:,})")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (bits/char)")
    ax.legend()
    ax.grid(True, alpha=0.3)
    names = [f"{r['attention']}\nL={r['context']:,}" for r in results["runs"]]
    bx.bar(names, [r["bits_per_char"] for r in results["runs"]], color=["C0", "C2", "C3"][: len(names)])
    for i, r in enumerate(results["runs"]):
        bx.text(
            i,
            r["bits_per_char"],
            f"{r['bits_per_char']:.3f}\n{r['footprint'] / MIB:.0f} MiB",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    if results["runs"]:
        bx.set_ylim(0, 1.25 * max(r["bits_per_char"] for r in results["runs"]))
    bx.set_ylabel("validation bits/char")
    bx.set_title(f"train-step budget {results['budget_mib']:g} MiB (compiled)")
    fig.suptitle(
        f"character LM: softmax at its longest context within the budget vs neuron–astrocyte at {results['factor']}×"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
