"""Train every attention kind on every task for a fixed step budget on the CPU: final metric and training speed.

For each task (MQAR, induction heads, selective copying, copying, character LM) and attention kind (softmax,
linear, na-equilibrium, na-ode) a small `Transformer` (same sizes and seed for all kinds) trains for
`--steps` steps; the script records the task's metric on its eval split at the end, the training tokens/s
(median over steps after the first, which includes compilation) and the compile-inclusive first-step time,
and reports na-ode's tokens/s relative to softmax's. Results: `benchmarks/results/train_tasks.json` and
`train_tasks.png`.

    python -m benchmarks.train_tasks            # 200 steps, all tasks and kinds (tens of minutes on 2 cores)
    python -m benchmarks.train_tasks --quick    # 20 steps, MQAR and charlm, softmax and na-ode (a few minutes)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from astroformer import ATTENTION_KINDS
from astroformer.training import TASK_PRESETS, TrainConfig, read_metrics, train

from ._common import add_host_memory_argument, apply_host_memory_argument, machine_info, pyplot, write_json

TASKS = {task: {**TASK_PRESETS[task].get("task_kwargs", {})} for task in TASK_PRESETS}  # the CLI's task sizes
TASKS["charlm"] = {"seq_len": 64}


def run(task: str, kind: str, steps: int, root: str) -> dict:
    config = TrainConfig(
        task=task,
        task_kwargs=TASKS[task],
        attention=kind,
        d_model=32,
        num_layers=2,
        num_heads=2,
        num_features=16,
        read_steps=8,
        steps=steps,
        batch_size=16,
        learning_rate=3e-3,
        warmup=max(1, steps // 10),
        eval_every=steps,
        eval_batches=4,
        checkpoint_every=0,
        run_dir=f"{root}/{task}-{kind}",
    )
    start = time.perf_counter()
    result = train(config, progress=False)
    records = [r for r in read_metrics(result.run_dir) if r["kind"] == "train"]
    rates = [r["tokens_per_s"] for r in records if r["tokens_per_s"] is not None]
    metric = "bits_per_char" if task == "charlm" else "accuracy"
    return {
        "task": task,
        "attention": kind,
        "steps": steps,
        "metric": metric,
        "value": result.evals[-1][metric],
        "eval_loss": result.evals[-1]["loss"],
        "first_loss": records[0]["loss"],
        "last_loss": records[-1]["loss"],
        "tokens_per_s": statistics.median(rates) if rates else None,
        "first_step_s": records[0]["seconds"],
        "skipped_steps": sum(bool(r.get("skipped")) for r in records),
        "wall_s": time.perf_counter() - start,
    }


def plot(results: list[dict], path) -> None:
    plt = pyplot()

    tasks = list(dict.fromkeys(r["task"] for r in results))
    kinds = list(dict.fromkeys(r["attention"] for r in results))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / len(kinds)
    for j, kind in enumerate(kinds):
        values = [next((r["value"] for r in results if r["task"] == t and r["attention"] == kind), 0) for t in tasks]
        rates = [
            next((r["tokens_per_s"] or 0 for r in results if r["task"] == t and r["attention"] == kind), 0)
            for t in tasks
        ]
        xs = [i + j * width for i in range(len(tasks))]
        axes[0].bar(xs, values, width, label=kind)
        axes[1].bar(xs, rates, width, label=kind)
    labels = [f"{t}\n({'bits/char' if t == 'charlm' else 'accuracy'})" for t in tasks]
    for ax in axes:
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(tasks))], labels, fontsize=8)
    axes[0].set(title=f"eval metric after {results[0]['steps']} steps", ylabel="accuracy / bits per char")
    axes[1].set(title="training speed", ylabel="tokens / s", yscale="log")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20 steps, MQAR and charlm, softmax and na-ode")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 200, quick 20)")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), help="tasks to run (default: all)")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/train_tasks[_quick].json)")
    parser.add_argument("--kinds", nargs="+", choices=list(ATTENTION_KINDS), help="attention kinds (default: all)")
    add_host_memory_argument(parser)
    args = parser.parse_args(argv)
    apply_host_memory_argument(args)
    tasks = args.tasks or (["mqar", "charlm"] if args.quick else list(TASKS))
    kinds = args.kinds or (["softmax", "na-ode"] if args.quick else list(ATTENTION_KINDS))
    steps = args.steps or (20 if args.quick else 200)
    info = machine_info()
    results = []
    with tempfile.TemporaryDirectory() as root:
        for task in tasks:
            for kind in kinds:
                r = run(task, kind, steps, root)
                results.append(r)
                print(
                    f"{task:15s} {kind:15s} {r['metric']} {r['value']:.4f}  loss {r['first_loss']:.3f} -> "
                    f"{r['last_loss']:.3f}  {r['tokens_per_s'] or 0:9,.0f} tok/s  first step "
                    f"{r['first_step_s']:.1f} s",
                    flush=True,
                )
    speed = {}
    for task in tasks:
        by_kind = {r["attention"]: r["tokens_per_s"] for r in results if r["task"] == task}
        if by_kind.get("softmax") and by_kind.get("na-ode"):
            speed[task] = by_kind["na-ode"] / by_kind["softmax"]
            print(f"{task:15s} na-ode tokens/s relative to softmax: {speed[task]:.3f}")
    name = "train_tasks_quick" if args.quick else "train_tasks"
    path = write_json(
        {"machine": info, "steps": steps, "results": results, "na_ode_speed_relative_to_softmax": speed},
        args.out,
        name=f"{name}.json",
    )
    plot(results, path.with_suffix(".png"))
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
