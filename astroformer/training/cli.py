"""`astroformer train`, `astroformer sample` and `astroformer eval` (registered by `astroformer.cli`).

`astroformer train` with no arguments trains a small character model with simulated neuron–astrocyte
attention on the default corpus for a few minutes on a laptop CPU, prints a sample, and compares its
bits/char with the latest softmax run of the same task under the same runs root, if there is one.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ._presets import TASK_PRESETS, parse_task_args

# The `TrainConfig` fields `astroformer train` sets, flag = field name (`--num-layers` sets `num_layers`), generated
# from the dataclass; `task_kwargs` comes from `--task-arg` and `run_dir` from `--run-dir`. Help per field:
_HELP = {
    "task": "task; each task has its own default sizes and budget (astroformer.training.TASK_PRESETS)",
    "text": "charlm: a UTF-8 text file to model instead of the default corpus",
    "attention": "attention kind",
    "feature_map": "feature neurons of na-* heads",
    "d_model": "model width",
    "num_layers": "number of blocks",
    "num_heads": "attention heads",
    "num_features": "feature neurons M per head",
    "mlp_ratio": "MLP width as a multiple of d_model",
    "tie_embeddings": "share the input embedding and the output projection",
    "short_conv": "width of the short causal convolution of the embeddings, 0: none",
    "read_steps": "steps per simulated read, na-ode",
    "steps": "optimiser steps",
    "batch_size": "sequences per step",
    "learning_rate": "peak learning rate",
    "warmup": "warm-up steps (with --steps alone: at most steps/10)",
    "min_lr_ratio": "final learning rate of the cosine decay, as a fraction of the peak",
    "weight_decay": "AdamW weight decay (matrices only)",
    "grad_clip": "global gradient-norm clip",
    "eval_every": "evaluate every so many steps",
    "eval_batches": "batches per evaluation",
    "checkpoint_every": "write a checkpoint every so many steps, 0: only at the end",
    "data_parallel": "shard batches over all visible devices",
    "seed": "seed of initialisation and data",
}
# Earlier, shorter spellings that are still accepted.
_OLD_SPELLINGS = {
    "num_layers": "--layers",
    "num_heads": "--heads",
    "num_features": "--features",
    "learning_rate": "--lr",
}


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _add_config_flags(parser, defaults, choices: dict[str, list[str]]) -> None:
    """One flag per `TrainConfig` field in `_HELP`, its type from the field's annotation, default None (unset:
    the task preset's value, else the field's default)."""
    import argparse
    import dataclasses

    types = {"int": int, "float": float, "str": str, "str | None": str}
    for field in dataclasses.fields(defaults):
        if field.name not in _HELP:
            continue
        names = [_flag(field.name)] + ([_OLD_SPELLINGS[field.name]] if field.name in _OLD_SPELLINGS else [])
        default = getattr(defaults, field.name)
        help_text = _HELP[field.name] + ("" if default is None else f" (default {default})")
        annotation = str(field.type)  # a string: _config uses `from __future__ import annotations`
        if annotation == "bool":
            parser.add_argument(*names, dest=field.name, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(
                *names, dest=field.name, type=types[annotation], choices=choices.get(field.name), help=help_text
            )


def register(subparsers) -> None:
    """Add the `train`, `sample` and `eval` subcommands to an argparse `subparsers` object."""
    from .._attention import ATTENTION_KINDS
    from .._features._registry import FEATURE_MAPS
    from .._validate import seed_argument
    from ._config import TrainConfig

    d = TrainConfig()
    train = subparsers.add_parser(
        "train",
        help="train a transformer on a task (default: a character model with na-ode attention)",
        description="Train a transformer; with no arguments, a character model of the default corpus with "
        "neuron-astrocyte (na-ode) attention, a few minutes on a CPU.",
    )
    _add_config_flags(
        train,
        d,
        {"task": list(TASK_PRESETS), "attention": list(ATTENTION_KINDS), "feature_map": list(FEATURE_MAPS)},
    )
    train.add_argument(
        "--task-arg",
        action="append",
        metavar="KEY=VALUE",
        help="a task argument, e.g. --task-arg num_kv_pairs=16 (repeatable; see the task's class)",
    )
    train.add_argument("--seq-len", type=int, help="sequence length of the task (default: the task's)")
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
    sample.add_argument("--seed", type=seed_argument, default=0)
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
    from .._host_memory import keep_freed_host_memory

    keep_freed_host_memory()  # the train step's temporaries reuse freed pages (`astroformer._host_memory`)
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

    given = {field: getattr(args, field) for field in _HELP if getattr(args, field) is not None}
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
        if given.get("text"):  # stored absolute: eval and sample may run from another directory
            import os

            given["text"] = os.path.abspath(given["text"])
        if "steps" in given and "warmup" not in given:  # keep the default warm-up shorter than short runs
            given["warmup"] = min(TrainConfig.warmup, given["steps"] // 10)
        try:
            config = TrainConfig(**given, task_kwargs=task_kwargs, run_dir=args.run_dir)
        except ValueError as error:  # name the command-line flag next to the config field
            message = str(error)
            for field in _HELP:
                message = message.replace(f"`{field}`", f"`{field}` ({_flag(field)})")
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
        print(sample_text(result.model, task.corpus, "", 300, temperature=0.8, seed=0))  # "": a newline if it can
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
            if args.prompt is None:  # a newline where the corpus has one (sample_text's own fallback otherwise)
                prompt = "\n" if "\n" in task.corpus.chars else ""
            else:
                prompt = args.prompt
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
