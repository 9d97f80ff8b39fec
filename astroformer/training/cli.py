"""`astroformer train`, `astroformer sample` and `astroformer eval` (registered by `astroformer.cli`).

`astroformer train` with no arguments trains a small character model with simulated neuron–astrocyte
attention on the default corpus for a few minutes on a laptop CPU, prints a sample, and compares its
bits/char with the latest softmax run of the same task under the same runs root, if there is one.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ._presets import TASK_PRESETS, parse_task_args

# argparse destination -> TrainConfig field
_CONFIG_OPTIONS = {
    "task": "task",
    "attention": "attention",
    "steps": "steps",
    "batch_size": "batch_size",
    "lr": "lr",
    "warmup": "warmup",
    "d_model": "d_model",
    "layers": "num_layers",
    "heads": "num_heads",
    "features": "num_features",
    "read_steps": "read_steps",
    "seed": "seed",
    "text": "text",
    "eval_every": "eval_every",
    "eval_batches": "eval_batches",
    "data_parallel": "data_parallel",
    "checkpoint_every": "checkpoint_every",
    "grad_clip": "grad_clip",
    "feature_map": "feature_map",
}


def register(subparsers) -> None:
    """Add the `train`, `sample` and `eval` subcommands to an argparse `subparsers` object."""
    from .._attention import ATTENTION_KINDS
    from .._features._registry import FEATURE_MAPS
    from ._config import TrainConfig

    d = TrainConfig()
    train = subparsers.add_parser(
        "train",
        help="train a transformer on a task (default: a character model with na-ode attention)",
        description="Train a transformer; with no arguments, a character model of the default corpus with "
        "neuron-astrocyte (na-ode) attention, a few minutes on a CPU.",
    )
    train.add_argument(
        "--task",
        choices=list(TASK_PRESETS),
        help=f"task (default {d.task}); each task has its own default sizes and budget "
        "(astroformer.training.TASK_PRESETS)",
    )
    train.add_argument(
        "--task-arg",
        action="append",
        metavar="KEY=VALUE",
        help="a task argument, e.g. --task-arg num_kv_pairs=16 (repeatable; see the task's class)",
    )
    train.add_argument("--attention", choices=list(ATTENTION_KINDS), help=f"attention kind (default {d.attention})")
    train.add_argument("--steps", type=int, help=f"optimiser steps (default {d.steps})")
    train.add_argument("--batch-size", type=int, help=f"sequences per step (default {d.batch_size})")
    train.add_argument("--lr", type=float, help=f"peak learning rate (default {d.lr})")
    train.add_argument("--warmup", type=int, help=f"warm-up steps (default {d.warmup}, at most steps/10)")
    train.add_argument("--d-model", type=int, help=f"model width (default {d.d_model})")
    train.add_argument("--layers", type=int, help=f"number of blocks (default {d.num_layers})")
    train.add_argument("--heads", type=int, help=f"attention heads (default {d.num_heads})")
    train.add_argument("--features", type=int, help=f"feature neurons M per head (default {d.num_features})")
    train.add_argument(
        "--feature-map", choices=list(FEATURE_MAPS), help=f"feature neurons of na-* heads (default {d.feature_map})"
    )
    train.add_argument("--read-steps", type=int, help=f"steps per simulated read, na-ode (default {d.read_steps})")
    train.add_argument("--seq-len", type=int, help="sequence length of the task (default: the task's)")
    train.add_argument("--seed", type=int, help=f"seed of initialisation and data (default {d.seed})")
    train.add_argument("--eval-every", type=int, help=f"evaluate every so many steps (default {d.eval_every})")
    train.add_argument("--eval-batches", type=int, help=f"batches per evaluation (default {d.eval_batches})")
    train.add_argument("--text", help="charlm: a UTF-8 text file to model instead of the default corpus")
    train.add_argument(
        "--checkpoint-every",
        type=int,
        help=f"write a checkpoint every so many steps, 0: only at the end (default {d.checkpoint_every})",
    )
    train.add_argument("--grad-clip", type=float, help=f"global gradient-norm clip (default {d.grad_clip})")
    train.add_argument(
        "--data-parallel", action="store_true", default=None, help="shard batches over all visible devices"
    )
    train.add_argument("--run-dir", help="run directory (default runs/<task>-<attention>-<timestamp>)")
    train.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace a run already in --run-dir")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=_train)

    sample = subparsers.add_parser("sample", help="sample from a trained model")
    sample.add_argument("--run-dir", required=True, help="the run directory of a trained model")
    sample.add_argument("--prompt", default=None, help="text to continue (charlm only; default a newline)")
    sample.add_argument("--length", type=int, default=300, help="number of tokens to draw")
    sample.add_argument("--temperature", type=float, default=0.8)
    sample.add_argument("--top-k", type=int, default=None)
    sample.add_argument("--seed", type=int, default=0)
    sample.set_defaults(func=_sample)

    evaluate = subparsers.add_parser("eval", help="evaluate a trained model on its task's eval split")
    evaluate.add_argument("--run-dir", required=True, help="the run directory of a trained model")
    evaluate.add_argument("--batches", type=int, default=None, help="eval batches (default: the run's)")
    evaluate.set_defaults(func=_eval)

    from ._distill import register as register_distill

    register_distill(subparsers)


def _errors():
    from ._checkpoint import CheckpointError

    # OSError: unreadable paths (a directory given as a file, permissions, a full disk); FloatingPointError:
    # non-finite losses; RuntimeError: runtime checks inside compiled code (eqx.error_if).
    return (ValueError, TypeError, OSError, CheckpointError, FloatingPointError, RuntimeError)


def _fail(command: str, error: Exception) -> int:
    print(f"astroformer {command}: error: {_one_line(error)}", file=sys.stderr)
    return 2


def _one_line(error: Exception) -> str:
    """The message of `error` on one line: for an OSError its strerror and file name; for a runtime check
    raised from compiled code, only the check's message (without JAX's traceback notes)."""
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    from .._errors import runtime_message

    return runtime_message(error)


def _train(args) -> int:
    try:
        return _train_inner(args)
    except _errors() as error:
        return _fail("train", error)
    except KeyboardInterrupt as interrupt:
        from ._signals import exit_code

        return exit_code(getattr(interrupt, "signum", None))


def _train_inner(args) -> int:
    from ._config import TrainConfig
    from ._train import CONFIG, train

    given = {field: getattr(args, dest) for dest, field in _CONFIG_OPTIONS.items() if getattr(args, dest) is not None}
    if args.resume:
        if args.run_dir is None:
            raise ValueError("--resume: expected --run-dir naming the run to continue, got none")
        extra = (
            sorted(given) + (["seq_len"] if args.seq_len is not None else []) + (["task_arg"] if args.task_arg else [])
        )
        if extra:
            raise ValueError(
                f"--resume: the run's options come from {Path(args.run_dir) / CONFIG}; do not pass {', '.join(extra)}"
            )
        from ._rundir import check_run_dir

        check_run_dir(args.run_dir, resume=True, overwrite=False)
        config = TrainConfig.load(Path(args.run_dir) / CONFIG).replace(run_dir=args.run_dir)
    else:
        task = given.get("task", TrainConfig.task)
        preset = dict(TASK_PRESETS[task])
        task_kwargs = {**preset.pop("task_kwargs", {}), **parse_task_args(args.task_arg)}
        if args.seq_len is not None:
            task_kwargs["seq_len"] = args.seq_len
        given = {**preset, **given}
        if "steps" in given and "warmup" not in given:  # keep the default warm-up shorter than short runs
            given["warmup"] = min(TrainConfig.warmup, given["steps"] // 10)
        try:
            config = TrainConfig(**given, task_kwargs=task_kwargs, run_dir=args.run_dir)
        except ValueError as error:  # name the command-line flag next to the config field
            message = str(error)
            for dest, field in _CONFIG_OPTIONS.items():
                message = message.replace(f"`{field}`", f"`{field}` (--{dest.replace('_', '-')})")
            raise ValueError(message) from None
        if task != "charlm":
            from ..tasks import get_task

            try:  # a bad task argument fails here, before any run directory is touched
                get_task(task, **task_kwargs)
            except (TypeError, ValueError) as error:
                raise ValueError(f"--task-arg: {error}") from None
    result = train(config, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    final = result.evals[-1] if result.evals else None
    print(f"run directory: {result.run_dir}  ({result.step} steps, {result.seconds:.0f} s)")
    if final is not None:
        _report(result.config, result.run_dir, final)
    if config.task == "charlm":
        from ..tasks import CharLM
        from ._sample import sample_text
        from ._train import build_task

        task = build_task(result.config)
        assert isinstance(task, CharLM) and task.corpus is not None  # config.task == "charlm"
        print("sample:")
        print(sample_text(result.model, task.corpus, "\n", 300, temperature=0.8, seed=0))
    return 0


def _report(config, run_dir: str, final: dict) -> None:
    """Print the final metric and compare it with the latest run of the other kind on the same task."""
    from ._train import read_metrics

    metric = "bits_per_char" if config.task == "charlm" else "accuracy"
    label = "bits/char" if metric == "bits_per_char" else "accuracy"
    value = final[metric]
    other_kind = "softmax" if config.attention != "softmax" else "na-ode"
    other = _latest_run(Path(run_dir).parent, config, other_kind, exclude=Path(run_dir))
    line = f"{config.attention}: {label} {value:.4f} at step {final['step']}"
    if other is None:
        print(
            f"{line}; no {other_kind} run of this task under {Path(run_dir).parent}/ to compare with "
            f"(train one with `astroformer train --task {config.task} --attention {other_kind}"
            f"{'' if config.text is None else ' --text ' + config.text}`)"
        )
        return
    evals = [r for r in read_metrics(other) if r.get("kind") == "eval"]
    theirs = evals[-1]
    print(f"{line}; {other_kind} reached {theirs[metric]:.4f} at step {theirs['step']} ({other})")


def _latest_run(root: Path, config, kind: str, exclude: Path):
    """The most recently written run under `root` of `kind` attention on the same task (and text/kwargs)."""
    import warnings

    from ._config import TrainConfig
    from ._train import CHECKPOINT, CONFIG, read_metrics

    best, best_time = None, -1.0
    if not root.is_dir():
        return None
    for path in root.iterdir():
        try:  # only this run's files are read strictly: a damaged sibling run is skipped, not fatal
            if (
                path.resolve() == exclude.resolve()
                or not (path / CONFIG).is_file()
                or not (path / CHECKPOINT).is_file()
            ):
                continue
            other = TrainConfig.load(path / CONFIG)
        except (ValueError, OSError):
            continue
        same_task = (other.task, other.task_kwargs, other.text) == (config.task, config.task_kwargs, config.text)
        if other.attention != kind or not same_task:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if not any(r.get("kind") == "eval" for r in read_metrics(path)):
                    continue
        except (ValueError, OSError):
            continue
        mtime = (path / CHECKPOINT).stat().st_mtime
        if mtime > best_time:
            best, best_time = path, mtime
    return best


def _sample(args) -> int:
    try:
        import jax
        import numpy as np

        from ._sample import sample, sample_text
        from ._train import load_run

        if args.length < 1:
            raise ValueError(f"--length: expected a positive number of tokens, got {args.length}")
        config, task, model, metadata = load_run(args.run_dir)
        if config.task == "charlm":
            prompt = "\n" if args.prompt is None else args.prompt
            print(
                prompt
                + sample_text(
                    model,
                    task.corpus,
                    prompt,
                    args.length,
                    temperature=args.temperature,
                    top_k=args.top_k,
                    seed=args.seed,
                )
            )
        else:
            if args.prompt is not None:
                raise ValueError(
                    f"--prompt: only a charlm run takes a text prompt; {args.run_dir} is a "
                    f"{config.task!r} run, whose prompt is the first token of an eval sequence "
                    "(choose it with --seed)"
                )
            prompt = task.batch("eval", 1, seed=args.seed).inputs[0][:1]
            ids = sample(
                model,
                prompt,
                args.length,
                temperature=args.temperature,
                top_k=args.top_k,
                key=jax.random.PRNGKey(args.seed),
            )
            print(" ".join(map(str, np.asarray(ids).tolist())))
        return 0
    except _errors() as error:
        return _fail("sample", error)


def _eval(args) -> int:
    try:
        from ._train import evaluate, load_run

        config, task, model, metadata = load_run(args.run_dir)
        batches = config.eval_batches if args.batches is None else args.batches
        result = evaluate(model, task, batch_size=config.batch_size, num_batches=batches, seed=config.seed)
        print(
            f"{args.run_dir} (step {metadata['step']}, {config.task}, {config.attention}): "
            f"{task.metric_name} {result[task.metric_name]:.4f}, loss {result['loss']:.4f} nats "
            f"over {batches} eval batches of {config.batch_size}"
        )
        return 0
    except _errors() as error:
        return _fail("eval", error)
