r"""Train small transformers on MQAR end to end with the abstract astrocyte and with biophysical calcium.

Four attention kinds, one tiny `Transformer` each (same sizes, seed and data stream):

- `softmax`: vanilla attention (the reference);
- `na-ode`: the simulated neuron–astrocyte block with the paper's abstract astrocyte (`na_attention`);
- `na-ode + G-ChI` and `na-ode + Li–Rinzel`: the same block whose astrocyte processes carry a biophysical
  calcium model (`NeuronAstrocyteAttention(calcium=..., coupling=...)`, i.e. `na_attention_calcium`,
  docs/calcium.md). The calcium model's parameters and the coupling (gain, diffusion, maximal rate,
  half-saturation, Hill exponent, time scale) are trained with the network.

Positivity: every calcium-model and coupling parameter $\theta > 0$ is trained as $\log\theta$: the layer
stores them as `astroformer.Constrained` leaves and unwraps $\theta = e^{\log\theta}$ at call time, so the
training loop's step and AdamW (no weight decay on scalars) work on unconstrained values as they are and no
update can make a parameter non-positive. The `NAParams` time constants and the random feature matrices stay frozen
(`astroformer.training.trainable_filter`).

Recorded for each kind: the training loss of every step, eval accuracy on MQAR's eval split at a few points
and at the end, wall time per optimiser step (median of the steps after the first, which compiles) and the
compile-inclusive first step, and for the calcium kinds the learned coupling and the calcium parameters that
moved most. Results: `benchmarks/results/calcium_training.{json,png}` (`--quick`: `calcium_training_quick.*`).

Calcium solve: `calcium_steps` fixed `Ros2` steps per read (`NeuronAstrocyteAttention(calcium_steps=...)`):
fixed cost and memory, and a smooth function of the parameters. The adaptive default takes ~45 s per
optimiser step for G-ChI at these sizes (the batched while-loop runs to the slowest head and is
differentiated through recursive checkpoints), and explicit `Tsit5` at fixed steps diverges on the stiff
receptor binding. If a calcium solve still diverges during training (the step raises), the run of that kind
stops there and the JSON records the step (`diverged_at_step`).

    python -m benchmarks.calcium_training            # the full run (about 17 minutes on 2 idle CPU cores)
    python -m benchmarks.calcium_training --quick    # a smoke run (about 3 minutes)
"""

from __future__ import annotations

import argparse
import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import astroformer as af
from astroformer.calcium import GChI, LiRinzel
from astroformer.tasks import get_task
from astroformer.training import TrainConfig, Transformer, evaluate, make_optimizer, make_train_step
from astroformer.training import trainable_filter
from astroformer.training._train import data_seed

from ._common import machine_info, pyplot, write_json

KINDS = {
    "softmax": ("softmax", None),
    "na-ode (abstract)": ("na-ode", None),
    "na-ode + G-ChI": ("na-ode", GChI),
    "na-ode + Li-Rinzel": ("na-ode", LiRinzel),
}
FULL = dict(
    task=dict(vocab_size=32, seq_len=32, num_kv_pairs=4),
    d_model=32,
    num_layers=2,
    num_heads=2,
    num_features=16,
    read_steps=8,
    calcium_steps=64,
    batch_size=16,
    steps=300,
    evals=5,
    eval_batches=4,
    learning_rate=3e-3,
)
QUICK = dict(FULL, steps=12, evals=2, eval_batches=1, batch_size=8, num_layers=1, read_steps=4)


def _named_calcium(model: Transformer, layer: int = 0) -> dict[str, float]:
    attn = model.blocks[layer].attention
    calcium, coupling = af.unwrap((attn.calcium, attn.coupling))
    out = {
        f"coupling.{k}": float(getattr(coupling, k))
        for k in ("gain", "diffusion", "rate_max", "half_saturation", "hill", "time_scale")
    }
    for field in calcium.__dataclass_fields__:
        value = getattr(calcium, field)
        if eqx.is_inexact_array(value):
            out[f"calcium.{field}"] = float(value)
    return out


def run(name: str, sizes: dict, seed: int = 0) -> dict:
    kind, calcium_cls = KINDS[name]
    task = get_task("mqar", **sizes["task"])
    steps = sizes["steps"]
    attention_kwargs = None
    if kind == "na-ode":
        attention_kwargs = dict(read_steps=sizes["read_steps"])
        if calcium_cls is not None:
            attention_kwargs.update(calcium=calcium_cls(), calcium_steps=sizes["calcium_steps"])
    model = Transformer(
        task.vocab_size,
        task.seq_len,
        attention=kind,
        d_model=sizes["d_model"],
        num_layers=sizes["num_layers"],
        num_heads=sizes["num_heads"],
        num_features=sizes["num_features"],
        attention_kwargs=attention_kwargs,
        key=jax.random.PRNGKey(seed),
    )
    initial = _named_calcium(model) if calcium_cls is not None else None
    config = TrainConfig(
        task="mqar",
        attention=kind,
        steps=steps,
        batch_size=sizes["batch_size"],
        learning_rate=sizes["learning_rate"],
        warmup=max(1, steps // 10),
    )
    optimizer = make_optimizer(config)
    # The layer stores the calcium/coupling parameters in log coordinates (`Constrained`), so the training
    # loop's step trains them as they are and they stay positive.
    trainable, frozen = eqx.partition(model, trainable_filter(model))
    step_fn = make_train_step(optimizer)
    opt_state = optimizer.init(eqx.filter(trainable, eqx.is_inexact_array))
    eval_points = sorted({int(round(steps * (i + 1) / sizes["evals"])) for i in range(sizes["evals"])})
    losses, seconds, evals, skipped, diverged = [], [], [], 0, None
    start = time.perf_counter()
    for s in range(steps):
        batch = jax.tree.map(jnp.asarray, task.batch("train", config.batch_size, seed=data_seed(seed, s)))
        t0 = time.perf_counter()
        try:
            trainable, opt_state, loss, skip = step_fn(trainable, frozen, opt_state, batch)
            loss = float(loss)
        except eqx.EquinoxRuntimeError as error:  # a diverged calcium solve: record it, stop this kind
            print(f"  {name}: step {s + 1} failed: {str(error).splitlines()[0][:200]}", flush=True)
            diverged = s + 1
            break
        seconds.append(time.perf_counter() - t0)
        losses.append(loss)
        skipped += int(skip)
        if s + 1 in eval_points:
            current = eqx.combine(trainable, frozen)
            metrics = evaluate(
                current, task, batch_size=config.batch_size, num_batches=sizes["eval_batches"], seed=seed
            )
            evals.append({"step": s + 1, **metrics})
            print(
                f"  {name:20s} step {s + 1:4d}  train loss {loss:.3f}  eval accuracy {metrics['accuracy']:.3f}"
                f"  ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    final = eqx.combine(trainable, frozen)
    if diverged is not None:
        metrics = evaluate(final, task, batch_size=config.batch_size, num_batches=sizes["eval_batches"], seed=seed)
        evals.append({"step": diverged - 1, **metrics})
    result = {
        "name": name,
        "attention": kind,
        "calcium": None if calcium_cls is None else calcium_cls.__name__,
        "steps": steps,
        "losses": losses,
        "evals": evals,
        "accuracy": evals[-1]["accuracy"],
        "eval_loss": evals[-1]["loss"],
        "skipped_steps": skipped,
        "diverged_at_step": diverged,
        "first_step_s": seconds[0] if seconds else None,
        "step_s_median": statistics.median(seconds[1:]) if len(seconds) > 1 else None,
        "wall_s": time.perf_counter() - start,
    }
    if calcium_cls is not None:
        learned = _named_calcium(final)
        result["calcium_params_initial"] = initial
        result["calcium_params_learned"] = learned
        result["calcium_params_log_change"] = {k: float(np.log(learned[k] / initial[k])) for k in initial}
    return result


def plot(results: list[dict], path) -> None:
    plt = pyplot()

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for r in results:
        losses = np.asarray(r["losses"])
        w = max(1, len(losses) // 20)
        smooth = np.convolve(losses, np.ones(w) / w, mode="valid")
        (line,) = axes[0].plot(np.arange(w, len(losses) + 1), smooth, label=r["name"])
        axes[1].plot(
            [e["step"] for e in r["evals"]],
            [e["accuracy"] for e in r["evals"]],
            "o-",
            color=line.get_color(),
            label=r["name"],
        )
    axes[0].set(title="training loss (running mean)", xlabel="step", ylabel="cross-entropy (nats)")
    axes[1].set(title="MQAR eval accuracy", xlabel="step", ylabel="accuracy", ylim=(0, 1.02))
    axes[0].legend(fontsize=8)
    names = [r["name"] for r in results]
    xs = np.arange(len(results))
    bars = axes[2].bar(xs, [r["accuracy"] for r in results], color=[f"C{i}" for i in range(len(results))])
    for bar, r in zip(bars, results):
        axes[2].text(
            bar.get_x() + bar.get_width() / 2,
            bar.get_height() + 0.01,
            f"{r['accuracy']:.2f}\n{1e3 * (r['step_s_median'] or 0):.0f} ms/step",
            ha="center",
            va="bottom",
            fontsize=7,
        )
    axes[2].set_xticks(xs, names, fontsize=7, rotation=15)
    axes[2].set(title=f"final eval accuracy after {results[0]['steps']} steps", ylim=(0, 1.15))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run (12 steps, one layer)")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps per kind (default 300)")
    parser.add_argument(
        "--out",
        default=None,
        help="JSON path (default benchmarks/results/calcium_training[_quick].json); the PNG goes beside it",
    )
    args = parser.parse_args(argv)
    sizes = dict(QUICK if args.quick else FULL)
    if args.steps is not None:
        if args.steps < 2:
            raise ValueError(f"--steps: expected at least 2, got {args.steps}")
        sizes["steps"] = args.steps
    info = machine_info()
    print(
        f"MQAR {sizes['task']}; d_model {sizes['d_model']}, {sizes['num_layers']} layer(s), "
        f"{sizes['num_heads']} heads, M = {sizes['num_features']}; {sizes['steps']} steps of "
        f"{sizes['batch_size']} sequences",
        flush=True,
    )
    results = []
    for name in KINDS:
        r = run(name, sizes)
        results.append(r)
        first, last = (r["losses"][0], r["losses"][-1]) if r["losses"] else (float("nan"), float("nan"))
        print(
            f"{name:20s} accuracy {r['accuracy']:.3f}  loss {first:.3f} -> {last:.3f}  "
            f"{1e3 * (r['step_s_median'] or 0):8.1f} ms/step  first step {r['first_step_s']:.1f} s  "
            f"skipped {r['skipped_steps']}  diverged at {r['diverged_at_step']}",
            flush=True,
        )
    ref = next(r["step_s_median"] for r in results if r["name"] == "softmax")
    print("\nwall time per step (median, after compilation):")
    for r in results:
        print(f"  {r['name']:20s} {1e3 * r['step_s_median']:8.1f} ms  ({r['step_s_median'] / ref:6.1f}x softmax)")
        if "calcium_params_learned" in r:
            change = r["calcium_params_log_change"]
            top = sorted(change, key=lambda k: -abs(change[k]))[:4]
            print(
                "    learned (layer 0): "
                + ", ".join(
                    f"{k} {r['calcium_params_initial'][k]:.3g} -> {r['calcium_params_learned'][k]:.3g}" for k in top
                )
            )
    name = "calcium_training_quick" if args.quick else "calcium_training"
    path = write_json(
        {
            "machine": info,
            "sizes": sizes,
            "positivity": "log reparameterisation of every calcium-model and coupling parameter",
            "results": results,
        },
        args.out,
        name=f"{name}.json",
    )
    plot(results, path.with_suffix(".png"))
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
