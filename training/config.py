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
from typing import Annotated, Any, Literal

from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from models.config import ArchConfig, NonNegFloat, NonNegInt, PosFloat, PosInt, Probability, Strict


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
    initialization_timeout: PosInt
    heartbeat_timeout_seconds: PosInt
    shutdown_timeout_seconds: PosInt


class CurriculumConfig(Strict):
    """Recursion-depth curriculum: cycles grow linearly from the start values to the
    architecture's values over the first `epochs` epochs (contribution 1)."""

    enabled: bool
    start_L_cycles: PosInt
    start_H_cycles: PosInt
    epochs: NonNegFloat


class HaltExplorationSchedule(Strict):
    """Anneal halt_exploration_prob linearly from `start` to `end` over the run
    (contribution 2); disabled means the architecture's fixed value."""

    enabled: bool
    start: Probability
    end: Probability


class SmokeConfig(Strict):
    """`smoke.enabled=true` shrinks any experiment so it finishes on a CPU in seconds."""

    enabled: bool
    hidden_size: PosInt
    num_heads: PosInt
    global_batch_size: PosInt
    max_steps: PosInt | None
    num_puzzles: PosInt


# Evaluator plugins by name (evaluators/__init__.py builds them).
EVALUATORS = ("arc",)
# Arrays an evaluation can save per row (training/eval_outputs.py).
EvalOutput = Literal["inputs", "labels", "puzzle_identifiers", "preds", "q_halt_logits", "halt_step"]


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
    global_batch_size: PosInt
    grad_accum_steps: PosInt
    epochs: PosInt
    eval_interval: PosInt
    min_eval_interval: NonNegInt
    max_steps: PosInt | None
    # Optimizer
    optimizer: Literal["adam_atan2", "adamw", "lion"]
    lr: PosFloat
    lr_min_ratio: Probability
    lr_warmup_steps: NonNegInt
    beta1: Annotated[float, Field(ge=0, lt=1)]
    beta2: Annotated[float, Field(ge=0, lt=1)]
    weight_decay: NonNegFloat
    puzzle_emb_lr: NonNegFloat
    puzzle_emb_weight_decay: NonNegFloat
    freeze_weights: bool
    ema: bool
    ema_rate: Annotated[float, Field(gt=0, lt=1)]
    ema_rates: list[Annotated[float, Field(gt=0, lt=1)]]
    # float16 dynamic loss scaling (ignored for bfloat16/float32)
    loss_scale_init: PosFloat
    loss_scale_growth_interval: PosInt
    nonfinite_loss: Literal["stop", "skip"]
    stop_grace_seconds: PosFloat
    transfer_guard: Literal["allow", "log", "disallow"]
    curriculum: CurriculumConfig
    halt_exploration_schedule: HaltExplorationSchedule
    seed: NonNegInt
    # Outputs
    experiment_group: str
    experiment_name: str
    run_dir: str | None
    checkpoint_root: str | None
    checkpoint_every_eval: bool
    checkpoint_every_steps: PosInt | None
    max_to_keep: PosInt
    resume: Literal["auto", "never", "must"]
    load_checkpoint: str | None
    log_every_steps: PosInt
    eval_subset: PosInt | None
    eval_save_outputs: list[EvalOutput]
    peak_tflops: PosFloat | None
    wandb: WandbConfig
    # Parallelism
    mesh_model: PosInt
    distributed: DistributedConfig
    smoke: SmokeConfig

    @model_validator(mode="after")
    def _values(self) -> PretrainConfig:
        if self.global_batch_size % self.grad_accum_steps:
            raise ValueError(
                f"global_batch_size={self.global_batch_size} is not divisible by "
                f"grad_accum_steps={self.grad_accum_steps}"
            )
        if self.epochs % self.eval_interval:
            raise ValueError(
                f"epochs={self.epochs} must be a multiple of eval_interval={self.eval_interval} "
                "(the official loop trains eval_interval epochs between evaluations)"
            )
        if not self.data_paths:
            raise ValueError("data_paths is empty: name at least one dataset directory")
        unknown = sorted({e.name for e in self.evaluators} - set(EVALUATORS))
        if unknown:
            raise ValueError(f"unknown evaluators {unknown}: available {list(EVALUATORS)}")
        labels = [f"{r:g}" for r in self.ema_rates]
        if len(set(labels)) < len(labels) or (f"{self.ema_rate:g}" in labels and self.ema_rate not in self.ema_rates):
            raise ValueError(
                f"ema_rates={self.ema_rates} (with ema_rate={self.ema_rate}) holds rates that print alike "
                "(eval_ema<rate> metric names): give each rate once"
            )
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
        """Official: int(epochs * total_groups * mean_puzzle_examples / global_batch_size), which
        must fit the int32 step counter of the state."""
        steps = int(self.epochs * total_groups * mean_puzzle_examples / self.global_batch_size)
        if steps < 1 or steps >= 2**31:
            raise ConfigError(
                f"epochs={self.epochs} x {total_groups} groups x {mean_puzzle_examples:g} examples / "
                f"global_batch_size={self.global_batch_size} gives {steps} training steps: choose epochs so that "
                f"there are between 1 and {2**31 - 1}"
            )
        return steps

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
            got = e.get("input")
            # A check across several keys names them in its message; the whole config is no help.
            lines.append(f"  {loc}: {e['msg']}" + ("" if isinstance(got, dict) else f" (got {got!r})"))
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
    # A smoke run never writes where the real experiment does (its summary would mark it done).
    run_dir = cfg.run_dir or f"runs/smoke/{cfg.experiment_group}/{cfg.experiment_name}"
    OmegaConf.update(cfg, "run_dir", run_dir)
    OmegaConf.update(cfg, "checkpoint_root", None)
    OmegaConf.update(cfg, "data_paths", [f"{run_dir}/smoke_data"])
    OmegaConf.update(cfg, "data_generator", "smoke")
    OmegaConf.update(cfg, "data_paths_test", [])
    OmegaConf.update(cfg, "evaluators", [])
    OmegaConf.update(cfg, "wandb.mode", "disabled")
    return cfg
