"""Look tasks up by name."""

from __future__ import annotations

import dataclasses

from ._base import AbstractTask
from ._charlm import CharLM
from ._copying import Copying
from ._induction import InductionHeads
from ._mqar import MQAR
from ._selective_copying import SelectiveCopying

_TASKS: dict[str, type[AbstractTask]] = {
    cls.name: cls for cls in (MQAR, InductionHeads, SelectiveCopying, Copying, CharLM)
}

#: The names `get_task` accepts.
TASK_NAMES: tuple[str, ...] = tuple(_TASKS)


def get_task(name: str, **kwargs) -> AbstractTask:
    """Build a task from its name.

    **Arguments:**

    - `name`: one of `"mqar"` (`MQAR`), `"induction"` (`InductionHeads`), `"selective-copy"`
      (`SelectiveCopying`), `"copy"` (`Copying`) or `"charlm"` (`CharLM`).
    - `**kwargs`: the task's constructor arguments.

    **Returns:**

    The task.

    **Example:**

    >>> task = get_task("mqar", seq_len=128, num_kv_pairs=8)
    >>> task.batch("train", 4, seed=0).inputs.shape
    (4, 128)
    """
    if name not in _TASKS:
        raise ValueError(f"get_task: unknown task `name` {name!r}; expected one of {', '.join(map(repr, _TASKS))}.")
    cls = _TASKS[name]
    assert dataclasses.is_dataclass(cls)  # every registered task is a dataclass
    accepted = [f.name for f in dataclasses.fields(cls) if f.init]
    unexpected = sorted(set(kwargs) - set(accepted))
    if unexpected:
        raise TypeError(
            f"get_task: task {name!r} ({cls.__name__}) got unexpected argument(s) {unexpected}; it accepts {accepted}."
        )
    return cls(**kwargs)
