"""Train-step compile time and throughput of the default `astroformer train` model, per attention kind.

For each kind, the default `TrainConfig` (char-LM task, model and batch as `astroformer train` builds them)
with only `attention` changed: the jitted train step (`make_train_step`) is lowered and compiled
(`compile_s`), then timed on the same batch, interleaved across kinds (median of `--repeats`), giving
tokens/s and the ratio to softmax measured in the same run.

    python -m benchmarks.train_compile [--kinds softmax na-ode] [--repeats N] [--processes P] [--out PATH]

With `--processes P` the whole measurement runs P times, each in a fresh Python process (a cold compile every
time: nothing is cached between them), and the JSON keeps every run plus, per kind, the compile times' and
throughput ratios' minimum, median and maximum over the runs (`summary`): one compile is too noisy a sample on a
shared machine.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import equinox as eqx
import jax

from astroformer.training import TrainConfig, build_model, build_task, make_optimizer, make_train_step
from astroformer.training._model import trainable_filter

from ._common import add_host_memory_argument, apply_host_memory_argument, machine_info, write_json


def prepare(kind: str):
    config = TrainConfig(attention=kind)
    task = build_task(config)
    model = build_model(config, task)
    trainable, frozen = eqx.partition(model, trainable_filter(model))
    optimizer = make_optimizer(config)
    opt_state = optimizer.init(trainable)
    batch = task.batch("train", config.batch_size, seed=0)
    step = make_train_step(optimizer)
    args = (trainable, frozen, opt_state, batch)
    start = time.perf_counter()
    compiled = step.lower(*args).compile()
    compile_s = time.perf_counter() - start
    tokens = config.batch_size * task.seq_len
    return config, compiled, args, compile_s, tokens


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", nargs="+", default=["softmax", "na-ode"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--processes", type=int, default=1, help="fresh processes to repeat the measurement in")
    parser.add_argument("--out", default=None)
    add_host_memory_argument(parser)
    args = parser.parse_args(argv)
    apply_host_memory_argument(args)
    if args.processes < 1:
        parser.error(f"--processes: expected a positive integer, got {args.processes}")
    if args.processes > 1:
        return _in_processes(args)
    results = {"benchmark": "train_compile", "machine": machine_info(), "kinds": {}}
    prepared = {}
    for kind in args.kinds:
        config, compiled, call_args, compile_s, tokens = prepare(kind)
        jax.block_until_ready(compiled(*call_args))
        prepared[kind] = (compiled, call_args)
        results["kinds"][kind] = {
            "compile_s": compile_s,
            "tokens_per_step": tokens,
            "config": {
                "task": config.task,
                "d_model": config.d_model,
                "num_layers": config.num_layers,
                "num_heads": config.num_heads,
                "num_features": config.num_features,
                "read_steps": config.read_steps,
                "batch_size": config.batch_size,
            },
        }
        print(f"{kind}: compile {compile_s:.1f} s", file=sys.stderr, flush=True)
    times = {kind: [] for kind in prepared}
    for _ in range(args.repeats):
        for kind, (compiled, call_args) in prepared.items():
            start = time.perf_counter()
            jax.block_until_ready(compiled(*call_args))
            times[kind].append(time.perf_counter() - start)
    for kind, ts in times.items():
        rec = results["kinds"][kind]
        rec["step_times"] = ts
        rec["step_median_s"] = statistics.median(ts)
        rec["tokens_per_s"] = rec["tokens_per_step"] / rec["step_median_s"]
    if "softmax" in results["kinds"]:
        soft = results["kinds"]["softmax"]
        for rec in results["kinds"].values():
            rec["throughput_ratio_to_softmax"] = rec["tokens_per_s"] / soft["tokens_per_s"]
            rec["compile_ratio_to_softmax"] = rec["compile_s"] / soft["compile_s"]
    path = write_json(results, args.out, "train_compile.json")
    for kind, rec in results["kinds"].items():
        print(
            f"{kind:15s} compile {rec['compile_s']:6.1f} s  step {rec['step_median_s'] * 1e3:7.1f} ms  "
            f"{rec['tokens_per_s']:8.0f} tokens/s  (throughput / softmax "
            f"{rec.get('throughput_ratio_to_softmax', float('nan')):.2f})"
        )
    print(f"wrote {path}")
    return results


def _in_processes(args):
    """The measurement repeated in `args.processes` fresh processes, with a summary over them."""
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.processes):
            out = os.path.join(tmp, f"run{i}.json")
            command = [sys.executable, "-m", "benchmarks.train_compile", "--kinds", *args.kinds]
            root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where `benchmarks` is importable
            if args.release_host_memory:
                command.append("--release-host-memory")
            subprocess.run([*command, "--repeats", str(args.repeats), "--out", out], check=True, cwd=root)
            with open(out) as f:
                runs.append(json.load(f))
    summary = {}
    for kind in args.kinds:
        records = [run["kinds"][kind] for run in runs]
        fields = {
            "compile_s": [r["compile_s"] for r in records],
            "step_median_s": [r["step_median_s"] for r in records],
        }
        if "throughput_ratio_to_softmax" in records[0]:
            fields["throughput_ratio_to_softmax"] = [r["throughput_ratio_to_softmax"] for r in records]
        summary[kind] = {
            name: {"min": min(v), "median": statistics.median(v), "max": max(v), "values": v}
            for name, v in fields.items()
        }
    results = {"benchmark": "train_compile", "machine": machine_info(), "processes": args.processes}
    results |= {"summary": summary, "runs": runs}
    path = write_json(results, args.out, "train_compile.json")
    for kind, rec in summary.items():
        c = rec["compile_s"]
        ratio = rec.get("throughput_ratio_to_softmax", {}).get("median", float("nan"))
        print(
            f"{kind:15s} compile {c['min']:.1f}-{c['max']:.1f} s (median {c['median']:.1f}) over {args.processes} "
            f"processes; throughput / softmax median {ratio:.2f}"
        )
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
