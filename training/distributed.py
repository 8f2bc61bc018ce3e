"""Multi-host initialisation and cross-process consistency checks."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import threading
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from training.config import ConfigError, DistributedConfig

# JAX's own initialisation deadline runs this much longer than ours: when it expires, its C++
# client aborts the process (no Python code can catch it), so ours must expire first.
_JAX_DEADLINE_MARGIN_S = 30

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
    if explicit and not 0 <= explicit["process_id"] < explicit["num_processes"]:
        n = explicit["num_processes"]
        raise ConfigError(
            f"process id {explicit['process_id']} is outside 0..{n - 1} for a job of {n} processes: set "
            "TRM_PROCESS_ID (distributed.process_id) to a distinct id in that range"
        )
    if explicit and explicit["process_id"] == 0:
        _check_coordinator_port_free(explicit["coordinator_address"])
    hint = _peer_hint(explicit, cfg.initialization_timeout)
    # A missing or duplicated peer makes jax.distributed.initialize wait, then abort in C++; a
    # timer of ours says what is wrong first. Nothing of the run exists yet, so exiting loses nothing.
    watchdog = threading.Timer(cfg.initialization_timeout, _exit_with, args=(hint,))
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(
            **explicit,
            initialization_timeout=cfg.initialization_timeout + _JAX_DEADLINE_MARGIN_S,
            heartbeat_timeout_seconds=cfg.heartbeat_timeout_seconds,
            shutdown_timeout_seconds=cfg.shutdown_timeout_seconds,
        )
    except Exception as e:
        reason = (str(e).strip() or type(e).__name__).splitlines()[0]
        raise ConfigError(f"{hint} ({reason})") from e
    finally:
        watchdog.cancel()


def _check_coordinator_port_free(address: str) -> None:
    """Process 0 serves the coordinator. If something already listens on its port (a second
    process 0, or one left from an earlier job), JAX would still start and the two jobs' processes
    would abort each other; a plain bind tells first."""
    port = int(address.rsplit(":", 1)[1])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))
        except OSError as e:
            raise ConfigError(
                f"process 0 cannot serve the coordinator at {address}: port {port} is in use on this host "
                f"({e.strerror}). Another process 0 (of this job or an earlier one) may still run: stop it, or "
                "choose another port"
            ) from e


def _peer_hint(explicit: dict[str, Any], timeout: int) -> str:
    if explicit:
        n, where = explicit["num_processes"], explicit["coordinator_address"]
        me = f"process {explicit['process_id']} of {n}"
        ids = f"exactly one process per id 0..{n - 1} (TRM_PROCESS_ID)"
    else:
        me, where, ids = "this process", "the auto-detected coordinator", "exactly one process per host"
    return (
        f"{me} did not meet all its peers at {where} within distributed.initialization_timeout={timeout}s: a "
        "process is missing, was started with another coordinator address or process count, or two were started "
        f"with the same process id. Start {ids}, all with the same coordinator address and process count; raise "
        "distributed.initialization_timeout if some hosts start slowly"
    )


def _exit_with(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    os._exit(1)


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
