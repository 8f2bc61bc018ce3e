"""Where a run writes: deterministic functions of the config, identical on every process."""

from __future__ import annotations

import os
from dataclasses import dataclass

from training.config import PretrainConfig


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
