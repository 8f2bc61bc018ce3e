"""The one Mesh and the NamedShardings of this project, declared in one place.

Mesh axes: `data` (all devices of all processes, batch rows split over it) and `model`
(reserved for tensor parallelism, size 1). Parameters, optimizer state and the puzzle
embedding are replicated; batch rows and the ACT carry are split over `data`.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA, MODEL = "data", "model"


@dataclass(frozen=True)
class Shardings:
    mesh: Mesh
    replicated: NamedSharding
    batch: NamedSharding  # leading (batch) axis over `data`
    micro_batch: NamedSharding  # [grad_accum, rows, ...]: second axis over `data`

    @property
    def data_size(self) -> int:
        return self.mesh.shape[DATA]


def make_shardings(model_axis: int = 1, devices=None) -> Shardings:
    devices = np.asarray(jax.devices() if devices is None else devices)
    if devices.size % model_axis:
        raise ValueError(f"{devices.size} devices cannot form a mesh with model axis {model_axis}")
    mesh = Mesh(devices.reshape(-1, model_axis), (DATA, MODEL))
    return Shardings(
        mesh=mesh,
        replicated=NamedSharding(mesh, PartitionSpec()),
        batch=NamedSharding(mesh, PartitionSpec(DATA)),
        micro_batch=NamedSharding(mesh, PartitionSpec(None, DATA)),
    )


def global_batch(local_rows: dict[str, np.ndarray], sh: Shardings) -> dict[str, jax.Array]:
    """Assemble each process's rows into global arrays split over `data`."""
    return {k: jax.make_array_from_process_local_data(sh.batch, v) for k, v in local_rows.items()}


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a row-sharded global array, in global order (deduplicated over
    replicas), i.e. exactly the rows it fed in through `global_batch`."""
    shards = {}
    for s in x.addressable_shards:
        start = s.index[0].start or 0
        shards.setdefault(start, s.data)
    return np.concatenate([np.asarray(shards[k]) for k in sorted(shards)])
