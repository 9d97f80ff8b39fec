"""Data-parallel training over all visible devices with a one-axis `jax.sharding.Mesh`.

The batch is split along a mesh axis named `"data"` (each device gets `batch_size / num_devices` sequences);
the model and optimiser state are replicated on every device (`NamedSharding(mesh, P())`). The train step is
the same `eqx.filter_jit` function as on one device: XLA inserts the all-reduce of the gradients, and
`eqx.filter_shard` keeps the updated parameters replicated. Results equal one device's up to the changed
order of float32 sums (the tests check 1e-5 relative over 3 steps).

Several hosts: call `jax.distributed.initialize()` at the start of every process (before any other JAX
call; on Cloud TPU / SLURM it finds the coordinator itself, otherwise pass `coordinator_address`,
`num_processes`, `process_id`), then run the same training script everywhere with `data_parallel=True`.
`jax.devices()` then lists the devices of all hosts and `make_mesh()` spans them. Every process draws the
same global batch (batches are a deterministic function of `(seed, step)`) and `shard_batch` places on
each local device only its own slice (`jax.make_array_from_callback`), so no data moves between hosts.
Only process 0 should write the run directory (`jax.process_index() == 0`); `train` does this.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
    """A one-dimensional mesh with axis `"data"` over `devices` (default: all of `jax.devices()`)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices: expected at least one device, got none")
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of a value copied whole onto every device of `mesh`."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The sharding of an array split along its first (batch) axis over the `"data"` axis of `mesh`."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicate(tree, mesh: Mesh):
    """Place every array leaf of `tree` on all devices of `mesh` (non-arrays pass through)."""
    sharding = replicated(mesh)

    def put(x):
        if isinstance(x, (jax.Array, np.ndarray)):
            return jax.make_array_from_callback(np.shape(x), sharding, lambda index: np.asarray(x)[index])
        return x

    return jax.tree.map(put, tree)


def shard_batch(tree, mesh: Mesh):
    """Split every array leaf of `tree` (a global batch, identical on every process) along its first axis
    over the `"data"` axis of `mesh`. The batch size must be a multiple of the number of devices."""
    sharding = batch_sharding(mesh)
    n = mesh.devices.size

    def put(x):
        x = np.asarray(x)
        if x.shape[0] % n:
            raise ValueError(f"batch_size: expected a multiple of the {n} devices of the mesh, got {x.shape[0]}")
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree)
