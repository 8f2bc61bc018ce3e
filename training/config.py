"""Validated run configuration.

Hydra composes the YAML files under `configs/`; this module turns the resolved tree into
pydantic models. Every knob has its default in YAML (`configs/cfg_pretrain.yaml`,
`configs/arch/trm.yaml`), not here: the schema only declares types and checks values, and it
rejects unknown keys so that a typo fails loudly instead of being ignored.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from models.config import ArchConfig, Strict


class WandbConfig(Strict):
    mode: Literal["online", "offline", "disabled"]
    project: str | None
    entity: str | None


class DistributedConfig(Strict):
    """Multi-host initialisation; null fields are auto-detected (Cloud TPU, SLURM) or read
    from TRM_COORDINATOR_ADDRESS / TRM_NUM_PROCESSES / TRM_PROCESS_ID."""

    coordinator_address: str | None
    num_processes: int | None
    process_id: int | None
    initialization_timeout: int
    heartbeat_timeout_seconds: int
    shutdown_timeout_seconds: int


class CurriculumConfig(Strict):
    """Recursion-depth curriculum: cycles grow linearly from the start values to the
    architecture's values over the first `epochs` epochs (contribution 1)."""

    enabled: bool
    start_L_cycles: int
    start_H_cycles: int
    epochs: float


class HaltExplorationSchedule(Strict):
    """Anneal halt_exploration_prob linearly from `start` to `end` over the run
    (contribution 2); disabled means the architecture's fixed value."""

    enabled: bool
    start: float
    end: float


class SmokeConfig(Strict):
    """`smoke.enabled=true` shrinks any experiment so it finishes on a CPU in seconds."""

    enabled: bool
    hidden_size: int
    num_heads: int
    global_batch_size: int
    max_steps: int
    num_puzzles: int


class EvaluatorConfig(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    name: str


class PretrainConfig(Strict):
    arch: ArchConfig
    # Data
    data_paths: list[str]
    data_paths_test: list[str]
    evaluators: list[EvaluatorConfig]
    data_generator: Literal["quickstart", "smoke"] | None
    # Schedule
    global_batch_size: int
    grad_accum_steps: int
    epochs: int
    eval_interval: int
    min_eval_interval: int
    max_steps: int | None
    # Optimizer
    optimizer: Literal["adam_atan2", "adamw", "lion"]
    lr: float
    lr_min_ratio: float
    lr_warmup_steps: int
    beta1: float
    beta2: float
    weight_decay: float
    puzzle_emb_lr: float
    puzzle_emb_weight_decay: float
    freeze_weights: bool
    ema: bool
    ema_rate: float
    # float16 dynamic loss scaling (ignored for bfloat16/float32)
    loss_scale_init: float
    loss_scale_growth_interval: int
    nonfinite_loss: Literal["stop", "skip"]
    stop_grace_seconds: float
    transfer_guard: Literal["allow", "log", "disallow"]
    curriculum: CurriculumConfig
    halt_exploration_schedule: HaltExplorationSchedule
    seed: int
    # Outputs
    experiment_group: str
    experiment_name: str
    run_dir: str | None
    checkpoint_root: str | None
    checkpoint_every_eval: bool
    checkpoint_every_steps: int | None
    max_to_keep: int
    load_checkpoint: str | None
    log_every_steps: int
    wandb: WandbConfig
    # Parallelism
    mesh_model: int
    distributed: DistributedConfig
    smoke: SmokeConfig

    @model_validator(mode="after")
    def _values(self) -> PretrainConfig:
        if self.global_batch_size < 1 or self.grad_accum_steps < 1:
            raise ValueError("global_batch_size and grad_accum_steps must be >= 1")
        if self.global_batch_size % self.grad_accum_steps:
            raise ValueError(
                f"global_batch_size={self.global_batch_size} is not divisible by "
                f"grad_accum_steps={self.grad_accum_steps}"
            )
        if self.epochs < 1 or self.eval_interval < 1:
            raise ValueError("epochs and eval_interval must be >= 1")
        if self.epochs % self.eval_interval:
            raise ValueError(
                f"epochs={self.epochs} must be a multiple of eval_interval={self.eval_interval} "
                "(the official loop trains eval_interval epochs between evaluations)"
            )
        if not 0.0 <= self.lr_min_ratio <= 1.0:
            raise ValueError("lr_min_ratio must be in [0, 1]")
        if not 0.0 < self.ema_rate < 1.0:
            raise ValueError("ema_rate must be in (0, 1)")
        if not self.data_paths:
            raise ValueError("data_paths is empty: name at least one dataset directory")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError("max_steps must be >= 1 or null")
        if self.mesh_model != 1:
            raise ValueError("mesh_model > 1 (tensor parallelism) is not implemented; use 1")
        c = self.curriculum
        if c.enabled and not (
            1 <= c.start_L_cycles <= self.arch.L_cycles and 1 <= c.start_H_cycles <= self.arch.H_cycles
        ):
            raise ValueError("curriculum start cycles must be between 1 and the architecture's cycles")
        return self

    def check_devices(self, num_devices: int) -> None:
        """The per-micro-batch rows must split evenly over the data axis."""
        micro = self.global_batch_size // self.grad_accum_steps
        if micro % num_devices:
            raise ConfigError(
                f"global_batch_size={self.global_batch_size} / grad_accum_steps={self.grad_accum_steps} "
                f"= {micro} rows per micro-batch cannot be split over {num_devices} devices; "
                f"choose a global_batch_size that is a multiple of {num_devices * self.grad_accum_steps}"
            )

    def total_steps(self, total_groups: int, mean_puzzle_examples: float) -> int:
        """Official: int(epochs * total_groups * mean_puzzle_examples / global_batch_size)."""
        return int(self.epochs * total_groups * mean_puzzle_examples / self.global_batch_size)

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()[:16]


class ConfigError(ValueError):
    """A configuration problem, with a message that says how to fix it."""


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {loc}: unknown key (typo? see configs/cfg_pretrain.yaml for valid keys)")
        elif e["type"] == "missing":
            lines.append(f"  {loc}: required key is missing")
        else:
            lines.append(f"  {loc}: {e['msg']} (got {e.get('input')!r})")
    return "invalid configuration:\n" + "\n".join(lines)


def validate(cfg: DictConfig | dict[str, Any]) -> PretrainConfig:
    """Resolve interpolations and validate; raises ConfigError with one line per problem."""
    raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    raw = dict(raw)
    raw.pop("hydra", None)
    try:
        return PretrainConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err)) from None


CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


def compose(config_name: str, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose a config the way `pretrain_jax.py --config-name NAME overrides...` does."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def apply_smoke(cfg: DictConfig) -> DictConfig:
    """With `smoke.enabled=true`, shrink the run (tiny model, few steps, generated data) while
    keeping everything the experiment varies that still fits: its group, name, optimizer,
    cycles, dtype, EMA, schedules."""
    if not cfg.smoke.enabled:
        return cfg
    cfg = cfg.copy()
    s = cfg.smoke
    OmegaConf.update(cfg, "arch.hidden_size", s.hidden_size)
    OmegaConf.update(cfg, "arch.num_heads", s.num_heads)
    OmegaConf.update(cfg, "arch.puzzle_emb_ndim", s.hidden_size)
    OmegaConf.update(cfg, "arch.puzzle_emb_len", min(cfg.arch.puzzle_emb_len, 2))
    OmegaConf.update(cfg, "arch.halt_max_steps", min(cfg.arch.halt_max_steps, 4))
    OmegaConf.update(cfg, "global_batch_size", s.global_batch_size)
    OmegaConf.update(cfg, "grad_accum_steps", 1)
    OmegaConf.update(cfg, "max_steps", s.max_steps)
    OmegaConf.update(cfg, "lr_warmup_steps", 1)
    OmegaConf.update(cfg, "checkpoint_every_steps", None)
    run_dir = cfg.run_dir or f"runs/{cfg.experiment_group}/{cfg.experiment_name}"
    OmegaConf.update(cfg, "data_paths", [f"{run_dir}/smoke_data"])
    OmegaConf.update(cfg, "data_generator", "smoke")
    OmegaConf.update(cfg, "data_paths_test", [])
    OmegaConf.update(cfg, "evaluators", [])
    OmegaConf.update(cfg, "wandb.mode", "disabled")
    return cfg
