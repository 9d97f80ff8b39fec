"""Per-task defaults of `astroformer train`: task arguments and training settings that learn the task on a CPU."""

from __future__ import annotations

import json
from typing import Any

#: For each task, the `TrainConfig` fields `astroformer train --task NAME` uses unless given on the command
#: line. Fields absent here keep `TrainConfig`'s defaults. The recall tasks' settings reach 0.99 accuracy
#: with softmax attention in a few minutes on a 2-core CPU (`benchmarks/recall.py` records the runs).
TASK_PRESETS: dict[str, dict[str, Any]] = {
    "charlm": {},
    "mqar": {
        "task_kwargs": {"vocab_size": 64, "seq_len": 64, "num_kv_pairs": 4},
        "num_layers": 1,
        "batch_size": 64,
        "steps": 400,
        "eval_every": 100,
    },
    "induction": {
        "task_kwargs": {"vocab_size": 64, "seq_len": 64},
        "num_layers": 1,
        "batch_size": 32,
        "steps": 300,
        "eval_every": 100,
    },
    "selective-copy": {"task_kwargs": {"seq_len": 64, "num_tokens": 8}},
    "copy": {"task_kwargs": {"seq_len": 32}},
}


def parse_task_args(items: list[str] | None) -> dict[str, Any]:
    """Parse `--task-arg KEY=VALUE` strings into task keyword arguments.

    `VALUE` is read as JSON when it is valid JSON (`16`, `0.5`, `true`, `"text"`) and kept as a string
    otherwise (`variant=trigger`).

    **Raises:** `ValueError` naming the item for one without `=`, with an empty key, or given twice.
    """
    kwargs: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--task-arg: expected KEY=VALUE (e.g. num_kv_pairs=16), got {item!r}")
        if key in kwargs:
            raise ValueError(f"--task-arg: {key!r} given twice ({kwargs[key]!r} and {value!r})")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    return kwargs


def preset_config(task: str, **changes):
    """The `TrainConfig` that `astroformer train --task TASK` uses, with `changes` applied.

    `task_kwargs` in `changes` update the preset's task arguments rather than replace them.

    **Example:**

    >>> config = preset_config("mqar", attention="na-ode", task_kwargs={"num_kv_pairs": 8})
    >>> config.task_kwargs["num_kv_pairs"], config.batch_size
    (8, 64)
    """
    from ._config import TrainConfig

    if task not in TASK_PRESETS:
        raise ValueError(f"preset_config: `task` must be one of {', '.join(TASK_PRESETS)}, got {task!r}")
    fields = dict(TASK_PRESETS[task])
    task_kwargs = {**fields.pop("task_kwargs", {}), **changes.pop("task_kwargs", {})}
    return TrainConfig(task=task, **{**fields, **changes}, task_kwargs=task_kwargs)
