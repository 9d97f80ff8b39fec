"""`TrainConfig`: everything that defines a training run, validated, with a JSON round trip."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

from .._attention import ATTENTION_KINDS
from .._features._registry import FEATURE_MAPS
from .._head._params import NUM_FEATURES, READ_STEPS
from .._validate import MAX_SEED

_TASKS = ("charlm", "mqar", "induction", "selective-copy", "copy")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The configuration of one training run. Its defaults are the `astroformer train` default run: a small
    character model with simulated neuron–astrocyte attention that trains for a few minutes on a laptop CPU.

    **Fields:**

    - `task`: one of `"charlm"`, `"mqar"`, `"induction"`, `"selective-copy"`, `"copy"`
      (`astroformer.tasks.get_task`); `task_kwargs`: its constructor arguments (JSON values only).
    - `text`: for `"charlm"`, the path of a UTF-8 text file to model instead of the default corpus.
    - `attention`: one of `astroformer.ATTENTION_KINDS`.
    - `feature_map`: the feature neurons of neuron–astrocyte heads, one of `astroformer.FEATURE_MAPS`
      (`"prf"`, `"orthogonal"`, `"oprf"`, `"orthogonal-oprf"`, `"learned"`, `"learned-envelope"`, and
      the same two `-unmirrored`; see
      `make_feature_map`).
    - `d_model`, `num_layers`, `num_heads`, `num_features` (M per neuron–astrocyte head), `mlp_ratio`,
      `tie_embeddings`: the `Transformer`'s sizes.
    - `short_conv`: width of the short causal convolution of the token embeddings (`Transformer`); 0: none.
      Configs saved before this field existed load with 0, the model they were trained with.
    - `read_steps`: steps of each simulated read (`"na-ode"` only; more is closer to the exact ODE solution and
      slower, about linearly).
    - `steps`, `batch_size`: optimiser steps and sequences per step.
    - `learning_rate`, `warmup`, `min_lr_ratio`: peak learning rate, linear warm-up steps, and the final
      learning rate of the cosine decay as a fraction of `learning_rate`. Configs saved when the field was
      called `lr` load with it renamed.
    - `weight_decay`: AdamW decoupled weight decay (on matrices only); `grad_clip`: global-norm clip.
    - `eval_every`, `eval_batches`: evaluate every `eval_every` steps (and at the end) on `eval_batches`
      batches of the task's eval split.
    - `checkpoint_every`: write a checkpoint every so many steps (and at the end); 0 means only at the end.
    - `data_parallel`: shard each batch over all visible devices (`batch_size` must divide evenly).
    - `seed`: seeds the initialisation and, with the step number, every data batch.
    - `run_dir`: where metrics and checkpoints go; `None` means `runs/<task>-<attention>-<timestamp>`.
    """

    task: str = "charlm"
    task_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    text: str | None = None
    attention: str = "na-ode"
    feature_map: str = "prf"
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_features: int = NUM_FEATURES
    mlp_ratio: int = 4
    tie_embeddings: bool = True
    short_conv: int = 2
    read_steps: int = READ_STEPS
    steps: int = 300
    batch_size: int = 16
    learning_rate: float = 3e-3
    warmup: int = 30
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 4
    checkpoint_every: int = 100
    data_parallel: bool = False
    seed: int = 0
    run_dir: str | None = None

    def __post_init__(self):
        def fail(name, expected):
            raise ValueError(f"TrainConfig: `{name}` must be {expected}, got {getattr(self, name)!r}")

        if self.task not in _TASKS:
            fail("task", f"one of {', '.join(_TASKS)}")
        if not isinstance(self.task_kwargs, dict) or not all(isinstance(k, str) for k in self.task_kwargs):
            fail("task_kwargs", "a dict with str keys")
        try:
            json.dumps(self.task_kwargs)
        except TypeError as error:
            raise ValueError(f"TrainConfig: `task_kwargs` must hold JSON values only ({error})") from None
        if self.text is not None:
            if self.task != "charlm":
                raise ValueError(f"TrainConfig: `text` is only used by task 'charlm', got task={self.task!r}")
            if not isinstance(self.text, str):
                fail("text", "a path (str) or None")
        if self.attention not in ATTENTION_KINDS:
            fail("attention", f"one of {', '.join(ATTENTION_KINDS)}")
        if self.feature_map not in FEATURE_MAPS:
            fail("feature_map", f"one of {', '.join(FEATURE_MAPS)}")
        for name in (
            "d_model",
            "num_layers",
            "num_heads",
            "num_features",
            "mlp_ratio",
            "read_steps",
            "steps",
            "batch_size",
            "eval_every",
            "eval_batches",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                fail(name, "a positive int")
        for name in ("warmup", "checkpoint_every", "seed", "short_conv"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                fail(name, "a non-negative int")
        if self.seed >= MAX_SEED:
            fail("seed", f"an int below 2**31 = {MAX_SEED}")
        if self.d_model % self.num_heads:
            raise ValueError(
                f"TrainConfig: `d_model` must be a multiple of num_heads={self.num_heads}, got {self.d_model}"
            )
        for name, low, low_ok in (
            ("learning_rate", 0.0, False),
            ("weight_decay", 0.0, True),
            ("grad_clip", 0.0, False),
            ("min_lr_ratio", 0.0, True),
        ):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or (value < low or (value == low and not low_ok))
            ):
                fail(name, f"a finite number {'>=' if low_ok else '>'} {low}")
        if self.min_lr_ratio > 1:
            fail("min_lr_ratio", "at most 1")
        if self.warmup >= self.steps:
            raise ValueError(f"TrainConfig: `warmup` must be smaller than steps={self.steps}, got {self.warmup}")
        for name in ("tie_embeddings", "data_parallel"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "a bool")
        if self.run_dir is not None and not isinstance(self.run_dir, str):
            fail("run_dir", "a path (str) or None")

    # ---------------------------------------------------------------------------------------- JSON

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict of JSON values."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """The config as a JSON string (`TrainConfig.from_json` inverts it)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build a config from a dict; unknown keys raise a `ValueError` listing them."""
        if not isinstance(data, dict):
            raise TypeError(f"TrainConfig.from_dict: expected a dict, got {type(data).__name__}")
        if "lr" in data and "learning_rate" not in data:  # saved before the field was renamed
            data = {("learning_rate" if k == "lr" else k): v for k, v in data.items()}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"TrainConfig: unknown field(s) {unknown}; expected some of {sorted(known)}")
        data = {"short_conv": 0, **data}  # saved before the field existed: no convolution
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        """Parse `TrainConfig.to_json`'s output."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"TrainConfig.from_json: not valid JSON ({error})") from None
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike) -> None:
        """Write the config as JSON to `path` (atomically: a temporary file, then `os.replace`)."""
        from ._checkpoint import atomic_write

        atomic_write(path, self.to_json().encode())

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainConfig:
        """Read a config written by `save`; errors name the file."""
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as f:
                return cls.from_json(f.read())
        except (ValueError, TypeError) as error:
            raise ValueError(f"TrainConfig.load: {path}: {error}") from error

    def replace(self, **changes) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)
