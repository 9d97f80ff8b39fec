"""A memory estimate of a training run before anything is allocated, so that a run far too large for the
machine fails at once with the numbers instead of running into the out-of-memory killer.

The parameter count is exact: the model is built abstractly (`jax.eval_shape`, no arrays) with one and with
two blocks and extrapolated linearly in `num_layers`. Training memory is estimated as

    4 copies of the trainable parameters (weights, gradients, two Adam moments) + the frozen parameters
    + activations kept for the backward pass of one batch,

the activations per block about `B L (d (10 + 3 r) + H a)` floats with `a = 2 L` for softmax attention (the
score matrix and its softmax), `a = M (4 + 2 s)` for neuron–astrocyte reads (`s` read steps) and `a = 2 M`
for linear attention, plus `3 B L V` for the logits. It is a rough upper-middle estimate (XLA may fuse or
rematerialise), meant for a fail-fast check with a safety factor, not for capacity planning.
"""

from __future__ import annotations

import dataclasses
import os

import equinox as eqx
import jax
import numpy as np


class MemoryEstimateError(ValueError):
    """The estimated memory of a run exceeds what the device has available."""


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of a training run: `trainable` / `frozen` parameter counts, `parameter_bytes` (weights,
    gradients, Adam moments and frozen arrays), `activation_bytes`, and `total_bytes`."""

    trainable: int
    frozen: int
    parameter_bytes: int
    activation_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.parameter_bytes + self.activation_bytes


def _counts(config, task, num_layers: int) -> tuple[int, int]:
    from ._model import trainable_filter
    from ._train import build_model

    shapes = jax.eval_shape(lambda: build_model(config.replace(num_layers=num_layers), task))
    # Zero-stride NumPy stand-ins (nothing allocated) so that `trainable_filter` sees arrays of each dtype.
    shapes = jax.tree.map(lambda s: np.broadcast_to(np.zeros((), s.dtype), s.shape), shapes)
    spec = trainable_filter(shapes)
    trainable, frozen = eqx.partition(shapes, spec)
    size = lambda tree: int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))  # noqa: E731
    return size(trainable), size(frozen)


def estimate_memory(config, task) -> MemoryEstimate:
    """The memory estimate of training `config` on `task` (see the module docstring)."""
    t1, f1 = _counts(config, task, 1)
    t2, f2 = _counts(config, task, 2)
    n = config.num_layers
    trainable, frozen = t1 + (n - 1) * (t2 - t1), f1 + (n - 1) * (f2 - f1)
    B, L, d, r, H, M = (
        config.batch_size,
        task.seq_len,
        config.d_model,
        config.mlp_ratio,
        config.num_heads,
        config.num_features,
    )
    if config.attention == "softmax":
        attention = 2 * L
    elif config.attention == "linear":
        attention = 2 * M
    else:
        attention = M * (4 + 2 * config.read_steps)
    activations = B * L * (n * (d * (10 + 3 * r) + H * attention) + 3 * task.vocab_size)
    itemsize = 4
    return MemoryEstimate(
        trainable=trainable,
        frozen=frozen,
        parameter_bytes=itemsize * (4 * trainable + frozen),
        activation_bytes=itemsize * activations,
    )


def available_memory() -> tuple[int | None, str]:
    """Bytes available to a new allocation on the default device, and the device's name (`None` if unknown)."""
    device = jax.devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - not every backend reports memory
        stats = None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)), f"{device.platform} device"
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "host (MemAvailable)"
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "host"
    except (ValueError, OSError, AttributeError):
        return None, "host"


def _gb(n: int | float) -> str:
    return f"{n / 2**30:.3g} GiB"


def check_memory(config, task, *, available: int | None = None) -> MemoryEstimate:
    """Raise `MemoryEstimateError` if the estimated memory of the run exceeds the memory available (or
    `available` bytes, if given). **Returns:** the estimate."""
    estimate = estimate_memory(config, task)
    where = "given"
    if available is None:
        available, where = available_memory()
    if available is not None and estimate.total_bytes > available:
        raise MemoryEstimateError(
            f"model and batch: expected to fit in the {_gb(available)} of memory available ({where}), got an "
            f"estimated {_gb(estimate.total_bytes)} ({estimate.trainable:,} trainable parameters: "
            f"{_gb(estimate.parameter_bytes)} with gradients and Adam moments; activations "
            f"{_gb(estimate.activation_bytes)}) for --num-layers {config.num_layers}, --d-model {config.d_model}, "
            f"--num-features {config.num_features}, --batch-size {config.batch_size}, sequence length "
            f"{task.seq_len}; make the model or the batch smaller"
        )
    return estimate
