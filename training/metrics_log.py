"""Run outputs on process 0: resolved config, metrics.jsonl, W&B, the tqdm progress bar."""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from tqdm import tqdm

from training.config import PretrainConfig
from training.run_paths import RunPaths

# Summed by the steps; divided on the host like the official loop does.
SUM_KEYS = ("accuracy", "exact_accuracy", "q_halt_accuracy", "steps", "lm_loss", "q_halt_loss", "q_continue_loss")


def accumulate_train(window: dict[str, Any], m: dict[str, Any]) -> dict[str, Any]:
    """Add one step's metric sums to the logging window; rates (lr, loss scale) keep the latest."""
    out = {
        k: (window[k] + m[k] if k in window else m[k])
        for k in (*SUM_KEYS, "count", "halt_step_hist", "skipped", "new_rows")
        if k in m
    }
    out.update(lr=m["lr"], loss_scale=m["loss_scale"], num_steps=window.get("num_steps", 0) + 1)
    return out


def reduce_train(m: dict[str, Any], global_batch_size: int) -> dict[str, Any]:
    """Official: losses / global batch size, the rest / max(count, 1) (halted, labelled rows);
    averaged over the steps of the logging window."""
    count = max(float(m["count"]), 1.0)
    rows = global_batch_size * m["num_steps"]
    out = {f"train/{k}": float(m[k]) / (rows if k.endswith("loss") else count) for k in SUM_KEYS if k in m}
    out["train/count"] = float(m["count"])
    out["train/halt_step_hist"] = np.asarray(m["halt_step_hist"]).tolist()
    # How much of each batch was fresh puzzles: 1 / (average ACT steps) once halting settles.
    out["train/new_data_fraction"] = float(m["new_rows"]) / rows
    for k in ("lr", "loss_scale"):
        out[f"train/{k}"] = float(m[k])
    out["train/skipped"] = int(m["skipped"])
    return out


# Evaluation sums with one value per ACT step (index i = after step i + 1), and the adaptive
# answer's sums (each row stops at its first q_halt > 0).
PER_STEP_KEYS = ("accuracy_per_step", "exact_accuracy_per_step", "q_halt_accuracy_per_step", "halt_fraction_per_step")
ADAPTIVE_KEYS = ("adaptive_accuracy", "adaptive_exact_accuracy", "adaptive_steps")


def reduce_eval(sums: dict[str, Any], set_name: str) -> dict[str, Any]:
    """Official evaluation divides every metric, losses included, by the count. Per-ACT-step and
    adaptive metrics are divided by the same count (every labelled row)."""
    count = max(float(sums["count"]), 1.0)
    out = {f"eval/{set_name}/{k}": float(sums[k]) / count for k in (*SUM_KEYS, *ADAPTIVE_KEYS) if k in sums}
    out.update(
        {f"eval/{set_name}/{k}": (np.asarray(sums[k], np.float64) / count).tolist() for k in PER_STEP_KEYS if k in sums}
    )
    out[f"eval/{set_name}/count"] = float(sums["count"])
    out[f"eval/{set_name}/halt_step_hist"] = np.asarray(sums["halt_step_hist"]).tolist()
    return out


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    """W&B charts scalars: a per-ACT-step list becomes one series per step (`key/1`, `key/2`, ...)."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, list):
            out.update({f"{k}/{i + 1}": x for i, x in enumerate(v)})
        else:
            out[k] = v
    return out


def _set_aside_rows_after(metrics_file: str, step: int) -> None:
    """A resumed run logs again the steps after its checkpoint: move the rows the interrupted run
    wrote for them into a side file (kept, never deleted), so metrics.jsonl has each step once."""
    if not os.path.exists(metrics_file):
        return
    with open(metrics_file) as f:
        lines = f.read().splitlines()

    def after(line: str) -> bool:
        try:
            return json.loads(line).get("step", 0) > step
        except ValueError:  # a row cut short by the kill
            return True

    later = [line for line in lines if after(line)]
    if not later:
        return
    side = f"{metrics_file}.after-step-{step}.{time.strftime('%Y%m%d-%H%M%S')}"
    with open(side, "w") as f:
        f.write("\n".join(later) + "\n")
    tmp = f"{metrics_file}.tmp"
    with open(tmp, "w") as f:
        f.write("".join(line + "\n" for line in lines if not after(line)))
    os.replace(tmp, metrics_file)


class RunLogger:
    """Writes only on the main process; every other process gets a no-op logger."""

    def __init__(
        self, paths: RunPaths, cfg: PretrainConfig, raw_cfg, *, is_main: bool, total_steps: int, start_step: int
    ):
        self.is_main = is_main
        self.paths = paths
        self._wandb = None
        self._bar = None
        if not is_main:
            return
        os.makedirs(paths.run_dir, exist_ok=True)
        # The composed Hydra config when the run came through it, else the validated one: both
        # are the config that trains (smoke settings applied).
        with open(paths.config_file, "w") as f:
            f.write(OmegaConf.to_yaml(raw_cfg if raw_cfg is not None else cfg.model_dump(), resolve=True))
        if start_step > 0:
            _set_aside_rows_after(paths.metrics_file, start_step)
        self._metrics = open(paths.metrics_file, "a")
        if cfg.wandb.mode != "disabled":
            import wandb

            # A deterministic id lets a resumed run continue the same W&B run.
            run_id = hashlib.sha1(f"{cfg.experiment_group}/{cfg.experiment_name}/{paths.run_dir}".encode()).hexdigest()[
                :16
            ]
            self._wandb = wandb.init(
                project=paths.wandb_project,
                entity=cfg.wandb.entity,
                name=cfg.experiment_name,
                group=cfg.experiment_group,
                config=cfg.model_dump(),
                mode=cfg.wandb.mode,
                dir=paths.run_dir,
                id=run_id,
                resume="allow",
            )
        self._bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, mininterval=1.0)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.is_main:
            return
        self._metrics.write(json.dumps({"step": step, **metrics}) + "\n")
        self._metrics.flush()
        if self._wandb is not None:
            self._wandb.log(_scalars(metrics), step=step)

    def progress(self, step: int, postfix: dict[str, Any]) -> None:
        if self._bar is not None:
            self._bar.n = step
            self._bar.set_postfix(postfix, refresh=True)

    def message(self, text: str) -> None:
        if self.is_main:
            (self._bar.write if self._bar is not None else print)(text)

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.is_main:
            tmp = self.paths.summary_file + ".tmp"
            with open(tmp, "w") as f:
                json.dump(summary, f, indent=2)
            os.replace(tmp, self.paths.summary_file)

    def close(self) -> None:
        if not self.is_main:
            return
        self._bar.close()
        self._metrics.close()
        if self._wandb is not None:
            self._wandb.finish()
