"""Multi-host initialisation and cross-process consistency checks."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from training.config import ConfigError, DistributedConfig

_ENV = {
    "coordinator_address": "TRM_COORDINATOR_ADDRESS",
    "num_processes": "TRM_NUM_PROCESSES",
    "process_id": "TRM_PROCESS_ID",
}


def _auto_detected() -> bool:
    """Cloud TPU VMs and SLURM jobs are detected by jax.distributed itself."""
    tpu = "TPU_WORKER_HOSTNAMES" in os.environ or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ
    slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ
    return tpu or slurm


def initialize(cfg: DistributedConfig) -> None:
    """Explicit settings (config keys, else TRM_* variables) win; otherwise auto-detection on
    Cloud TPU / SLURM; a plain single-process run skips initialisation."""
    explicit: dict[str, Any] = {}
    for key, env in _ENV.items():
        value = getattr(cfg, key) if getattr(cfg, key) is not None else os.environ.get(env)
        if value is not None:
            explicit[key] = value if key == "coordinator_address" else int(value)
    if not explicit and not _auto_detected():
        return
    if explicit and len(explicit) != 3:
        missing = [_ENV[k] for k in _ENV if k not in explicit]
        raise ConfigError(f"multi-process run is missing {missing} (or the distributed.* config keys)")
    try:
        jax.distributed.initialize(
            **explicit,
            initialization_timeout=cfg.initialization_timeout,
            heartbeat_timeout_seconds=cfg.heartbeat_timeout_seconds,
            shutdown_timeout_seconds=cfg.shutdown_timeout_seconds,
        )
    except Exception as e:
        where = explicit.get("coordinator_address", "auto-detected coordinator")
        raise RuntimeError(
            f"jax.distributed.initialize failed ({where}, timeout {cfg.initialization_timeout}s): {e}. "
            "Check that every process was started with the same coordinator address and process count, "
            "and that the coordinator port is reachable."
        ) from e


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): d}


def allgather_bytes(payload: bytes) -> list[bytes]:
    """Every process's `payload` (any length), in process order; a collective call.
    process_allgather needs equal shapes, hence the padding to the longest."""
    if jax.process_count() == 1:
        return [payload]
    lengths = multihost_utils.process_allgather(np.array([len(payload)], np.int64)).reshape(-1)
    buf = np.zeros(int(lengths.max()), np.uint8)
    buf[: len(payload)] = np.frombuffer(payload, np.uint8)
    gathered = multihost_utils.process_allgather(buf).reshape(len(lengths), -1)
    return [bytes(row[:n]) for row, n in zip(gathered, lengths, strict=False)]


def assert_consistent(what: str, data: dict[str, Any]) -> None:
    """Stop with an error naming the differing keys if processes disagree on `data`."""
    if jax.process_count() == 1:
        return
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    digest = np.frombuffer(hashlib.sha256(blob).digest(), np.uint8)
    digests = multihost_utils.process_allgather(digest)
    if (digests == digests[0]).all():
        return
    views = [_flatten(json.loads(b)) for b in allgather_bytes(blob)]
    differing = sorted(k for k in set().union(*views) if len({json.dumps(v.get(k), default=str) for v in views}) > 1)
    raise ConfigError(
        f"processes disagree on the {what}: differing keys {differing}. Every process must run the same "
        "command with the same config files and dataset; sync the code and data to every host."
    )
