"""Data parallelism: one ``data`` mesh axis over all devices, batches split on it.

Parameters and optimiser state are replicated; each batch is sharded along its leading
axis; ``jax.jit`` with these shardings compiles one SPMD program and XLA inserts the
gradient all-reduce (JAX documents ``pmap`` as legacy over this same machinery). Multi-host
works the same way once ``jax.distributed.initialize()`` has run: every host feeds its own
slice of the global batch.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxreg import spatial

__all__ = ["DATA_AXIS", "data_sharding", "host_rows", "initialize_distributed", "is_main_process",
           "make_mesh", "make_predict", "replicate_host", "replicated", "shard_batch"]

DATA_AXIS = "data"


def initialize_distributed(training: Mapping) -> None:
    """Joins a multi-process job when ``training.distributed`` is true (once per process).

    ``training.coordinator_address``, ``num_processes`` and ``process_id`` are passed on when
    set (non-empty, > 0, >= 0); otherwise JAX detects them from the cluster (SLURM, Open MPI,
    TPU pods, Kubernetes, ...). ``training.coordinator_timeout`` (seconds, default 300) bounds
    the wait for the coordinator and the other processes.

    Raises:
      ValueError: an incomplete or inconsistent set of options (``num_processes`` without a
        coordinator where no cluster is detected, ``process_id`` outside ``[0, num_processes)``),
        or a coordinator that does not answer within the timeout.
    """
    if not training.get("distributed"):
        return
    if jax.distributed.is_initialized():
        return
    options = {}
    address = str(training.get("coordinator_address") or "")
    num_processes = int(training.get("num_processes") or 0)
    process_id = training.get("process_id")
    process_id = -1 if process_id is None else int(process_id)
    timeout = int(training.get("coordinator_timeout") or 300)
    if timeout < 1:
        raise ValueError(f"`training.coordinator_timeout` must be >= 1 second; got {timeout}.")
    if address:
        if ":" not in address:
            raise ValueError(f"`training.coordinator_address` must be 'host:port'; got {address!r}.")
        options["coordinator_address"] = address
    if num_processes > 0:
        options["num_processes"] = num_processes
    if process_id >= 0:
        if num_processes > 0 and process_id >= num_processes:
            raise ValueError(f"`training.process_id` must be in [0, {num_processes}) for "
                             f"`training.num_processes`={num_processes}; got {process_id}.")
        options["process_id"] = process_id
    manual = {k for k in ("coordinator_address", "num_processes", "process_id") if k in options}
    if manual and manual != {"coordinator_address", "num_processes", "process_id"} and not _cluster_detected():
        missing = sorted({"coordinator_address", "num_processes", "process_id"} - manual)
        raise ValueError(f"multi-process training without a detected cluster (SLURM, Open MPI, TPU, ...) needs "
                         f"`training.coordinator_address`, `num_processes` and `process_id`; missing "
                         f"{['training.' + m for m in missing]}.")
    if not manual and not _cluster_detected():
        raise ValueError("`training.distributed` is true but no cluster (SLURM, Open MPI, TPU, ...) was detected; "
                         "give `training.coordinator_address`, `num_processes` and `process_id`.")
    where = f"the coordinator at {address}" if address else "the cluster's coordinator"
    message = (f"could not join the multi-process job through {where} within {timeout} s (process "
               f"{process_id if process_id >= 0 else '?'} of {num_processes or '?'}): is every process started, "
               "with the same coordinator address, and is its port reachable?")
    # JAX's runtime aborts the whole process (a C++ fatal error, no exception) when the
    # coordinator or a peer does not answer in time; a watchdog that fires first turns that
    # into the one-line error users get for every other bad input.
    watchdog = threading.Timer(timeout, _give_up, args=(message,))
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(initialization_timeout=timeout + 60, **options)
    except Exception as err:  # e.g. a malformed address
        raise ValueError(f"{message} ({' '.join(str(err).split())[:300]})") from err
    finally:
        watchdog.cancel()


def _give_up(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    os._exit(1)


def _cluster_detected() -> bool:
    """Whether one of JAX's cluster environments (SLURM, Open MPI, TPU, ...) is present."""
    try:
        from jax._src import clusters
    except ImportError:  # private module moved: let jax.distributed decide
        return True
    try:
        return any(env.is_env_present() for env in clusters.ClusterEnv._cluster_types)
    except Exception:
        return True


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over ``devices`` (default: all devices of all processes).

    Devices are ordered by process, then id, so that each process owns one contiguous block
    of every global batch (:func:`host_rows`).
    """
    devices = jax.devices() if devices is None else devices
    devices = sorted(devices, key=lambda d: (d.process_index, d.id))
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of parameters and optimiser state: a full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of batches: the leading (batch) axis split over the ``data`` axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def host_rows(per_device: int, mesh: Mesh) -> tuple[int, int, int]:
    """``(start, stop, global_batch)``: the rows of every global batch that this process feeds.

    The global batch is ``per_device × mesh.size`` pairs; the process owning mesh positions
    ``p..q`` feeds rows ``p·per_device .. (q+1)·per_device`` (its devices' shards, in order).

    Raises:
      ValueError: ``per_device < 1``, or this process's devices are not contiguous in the mesh
        (build it with :func:`make_mesh`).
    """
    if per_device < 1:
        raise ValueError(f"`data.batch_size` (per device) must be >= 1; got {per_device}.")
    positions = [i for i, d in enumerate(mesh.devices.flat) if d.process_index == jax.process_index()]
    if not positions:
        raise ValueError("this process has no device in the mesh.")
    if positions != list(range(positions[0], positions[-1] + 1)):
        raise ValueError(f"this process's devices sit at mesh positions {positions}, not one block; "
                         "build the mesh with jaxreg.sharding.make_mesh.")
    return positions[0] * per_device, (positions[-1] + 1) * per_device, mesh.size * per_device


def is_main_process() -> bool:
    """Whether this is process 0, the one that writes logs, figures and reports."""
    return jax.process_index() == 0


def replicate_host(array, mesh: Mesh) -> jax.Array:
    """A host array every process holds in full → a replicated global array (multi-host safe)."""
    return jax.make_array_from_process_local_data(replicated(mesh), np.asarray(array))


def make_predict(method, mesh: Mesh, *, downsample: int = 1):
    """Jitted ``method.predict(params, fixed, moving) -> ddf`` on ``(B, *S)`` images, its output replicated.

    ``method`` is a :class:`jaxreg.methods.Method` (anything with a ``predict``). ``downsample``:
    the network was trained at ``1/downsample`` of the images' size (``data.downsample``):
    :func:`at_full_size`.
    """
    return jax.jit(at_full_size(method.predict, downsample), out_shardings=replicated(mesh))


def at_full_size(predict: Callable, factor: int) -> Callable:
    """``predict(params, fixed, moving, **options)`` of a network trained at ``1/factor`` of the size,
    on full-size ``(B, *S)`` images: they are shrunk by ``factor`` (block means, as
    :func:`jaxreg.data.transforms.downsample` shrinks the training pairs) and the ``(B, *S/factor,
    ndim)`` field is brought back to ``(B, *S, ndim)`` voxels of the full grid
    (:func:`jaxreg.spatial.resize_ddf`: linear, vectors × ``factor``). ``factor`` 1: ``predict``.
    """
    factor = int(factor)
    if factor == 1:
        return predict

    def shrink(x):
        shape = x.shape[1:]
        if any(side % factor for side in shape):
            raise ValueError(f"`data.downsample` {factor} must divide every side of the images; got {shape}.")
        blocks = tuple(v for side in shape for v in (side // factor, factor))
        return jnp.mean(x.reshape(x.shape[:1] + blocks), axis=tuple(range(2, 2 * len(shape) + 1, 2)))

    def full(params, fixed, moving, **options):
        ddf = predict(params, shrink(fixed), shrink(moving), **options)
        return jax.vmap(lambda d: spatial.resize_ddf(d, fixed.shape[1:]))(ddf)

    return full


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This host's numpy batch → global arrays sharded on the ``data`` axis.

    Strings (pair ids) stay on the host and are left out.
    """
    sharding = data_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in batch.items() if np.asarray(v).dtype.kind not in "USO"}
