"""Data parallelism over a one-axis device mesh, on one device or a pod.

The global batch is split over the `data` axis across all devices of all
processes; parameters and optimizer state are replicated. The train step is
written for one global array and XLA inserts the collectives.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A mesh with one `data` axis over all (or the first `num_devices`) devices."""
  n = num_devices or jax.device_count()
  # Auto axes: XLA propagates shardings through the model (explicit-sharding mode
  # would make every reshape in the network declare its output sharding).
  return jax.make_mesh((n,), (DATA_AXIS,), devices=jax.devices()[:n],
                       axis_types=(jax.sharding.AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
  n = mesh.devices.size
  if global_batch_size % n:
    raise ValueError(
        f"batch_size={global_batch_size} is not divisible by the {n} devices of the mesh; "
        f"choose a multiple of {n}.")


def to_global(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's local batch into global arrays sharded over `data`."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a pytree (e.g. the train state) fully replicated on the mesh."""
  return jax.device_put(tree, replicated(mesh))


def fetch(tree: Any) -> Any:
  """Brings (replicated or sharded) arrays to host numpy on every process."""
  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
  return jax.tree.map(one, tree)
