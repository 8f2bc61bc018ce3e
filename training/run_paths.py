"""Where a run writes: deterministic functions of the config, identical on every process."""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from dataclasses import dataclass

import jax
import numpy as np
from jax.experimental import multihost_utils

from training.config import ConfigError, PretrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunPaths:
    run_dir: str  # resolved config, metrics.jsonl, summary.json
    checkpoint_dir: str  # Orbax CheckpointManager root (local path or gs:// URL)
    wandb_project: str

    @property
    def metrics_file(self) -> str:
        return os.path.join(self.run_dir, "metrics.jsonl")

    @property
    def summary_file(self) -> str:
        """Written last, after the final checkpoint is durable: its presence means 'done'."""
        return os.path.join(self.run_dir, "summary.json")

    @property
    def config_file(self) -> str:
        return os.path.join(self.run_dir, "config.yaml")


def resolve_paths(cfg: PretrainConfig) -> RunPaths:
    run_dir = cfg.run_dir or os.path.join("runs", cfg.experiment_group, cfg.experiment_name)
    if cfg.checkpoint_root:
        ckpt = "/".join([cfg.checkpoint_root.rstrip("/"), cfg.experiment_group, cfg.experiment_name])
    else:
        ckpt = os.path.join(run_dir, "checkpoints")
    if not ckpt.startswith("gs://"):
        ckpt = os.path.abspath(ckpt)
    project = cfg.wandb.project or f"trm-{cfg.experiment_group}"
    return RunPaths(run_dir=run_dir, checkpoint_dir=ckpt, wandb_project=project)


def ensure_run_dir(run_dir: str) -> None:
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ConfigError(f"run_dir={run_dir} is a file, not a directory: choose another run_dir")
    os.makedirs(run_dir, exist_ok=True)


def run_id(run_dir: str) -> str:
    """The id of the run that owns `run_dir`, made once by process 0 (`<run_dir>/run_id`) and the
    same on every process. Checkpoints carry it, so a run never resumes another run's state."""
    rid = ""
    if jax.process_index() == 0:
        ensure_run_dir(run_dir)
        path = os.path.join(run_dir, "run_id")
        if not os.path.exists(path):
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                f.write(uuid.uuid4().hex + "\n")
            os.replace(tmp, path)
        with open(path) as f:
            rid = f.read().strip()
    raw = multihost_utils.broadcast_one_to_all(np.frombuffer(bytes.fromhex(rid.ljust(32, "0")), np.uint8))
    return bytes(np.asarray(raw, np.uint8)).hex()


def _process_start_time(pid: int) -> str | None:
    """Start time of `pid` in clock ticks since boot (Linux), to tell a live owner from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


class RunLock:
    """`<run_dir>/run.lock`, held by process 0 while a run trains: a second run on the same run_dir
    is refused. It names the owner's host, pid and process start time, so a lock left by a killed
    run on this host is recognised as stale and taken over."""

    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, "run.lock")
        self.held = False
        if jax.process_index() != 0:
            return
        ensure_run_dir(run_dir)
        me = {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start_time(os.getpid())}
        while not self._try_create(me):
            owner = self._owner()
            if owner is None:
                continue  # released meanwhile
            alive = owner.get("host") != me["host"] or _process_start_time(owner.get("pid", -1)) == owner.get("start")
            if alive:
                raise ConfigError(
                    f"run_dir {run_dir} is in use by pid {owner.get('pid')} on host {owner.get('host')} ({self.path}): "
                    "wait for that run to end, or use another run_dir; if that process is gone, remove the lock file"
                )
            log.warning("taking over the stale lock %s of pid %s, which no longer runs", self.path, owner.get("pid"))
            os.replace(self._write_tmp(me), self.path)
            break
        self.held = True

    def _write_tmp(self, me: dict) -> str:
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(me, f)
        return tmp

    def _try_create(self, me: dict) -> bool:
        try:
            os.link(self._write_tmp(me), self.path)  # atomic: fails if a lock exists
            return True
        except FileExistsError:
            return False
        finally:
            os.remove(f"{self.path}.{os.getpid()}.tmp")

    def _owner(self) -> dict | None:
        try:
            with open(self.path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except ValueError:
            return {}

    def release(self) -> None:
        if self.held:
            os.remove(self.path)  # our own lock file
            self.held = False
