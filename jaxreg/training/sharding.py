"""Data parallelism: one ``data`` mesh axis over all devices, batches split on it.

Parameters and optimiser state are replicated; each batch is sharded along its leading
axis; ``jax.jit`` with these shardings compiles one SPMD program and XLA inserts the
gradient all-reduce (the successor of ``pmap``, DESIGN.md §5). Multi-host works the same
way once ``jax.distributed.initialize()`` has run: every host feeds its own slice of the
global batch.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["DATA_AXIS", "data_sharding", "host_batch_size", "initialize_distributed", "make_mesh", "replicate_host",
           "replicated", "shard_batch"]

DATA_AXIS = "data"


def initialize_distributed(training: Mapping) -> None:
    """Joins a multi-host job when ``training.distributed`` is true (once per process).

    ``training.coordinator_address``, ``num_processes`` and ``process_id`` are passed on when
    set (non-empty, > 0, >= 0); otherwise JAX detects them from the cluster (SLURM, TPU pods, Kubernetes, ...).
    """
    if not training.get("distributed"):
        return
    options = {}
    if training.get("coordinator_address"):
        options["coordinator_address"] = str(training.coordinator_address)
    if (training.get("num_processes") or 0) > 0:
        options["num_processes"] = int(training.num_processes)
    if training.get("process_id") is not None and training.process_id >= 0:
        options["process_id"] = int(training.process_id)
    jax.distributed.initialize(**options)


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over ``devices`` (default: all devices of all hosts)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of parameters and optimiser state: a full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of batches: the leading (batch) axis split over the ``data`` axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def host_batch_size(per_device: int, mesh: Mesh) -> int:
    """Pairs this host reads per step: ``per_device`` × its devices in the mesh.

    The global batch is ``per_device × mesh.size``.
    """
    if per_device < 1:
        raise ValueError(f"`data.batch_size` (per device) must be >= 1; got {per_device}.")
    local = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
    return per_device * local


def replicate_host(array, mesh: Mesh) -> jax.Array:
    """A host array every process holds in full → a replicated global array (multi-host safe)."""
    return jax.make_array_from_process_local_data(replicated(mesh), np.asarray(array))


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This host's numpy batch → global arrays sharded on the ``data`` axis.

    Strings (pair ids) stay on the host and are left out.
    """
    sharding = data_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in batch.items() if np.asarray(v).dtype.kind not in "USO"}
