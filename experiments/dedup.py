"""Which experiments are the same training.

Two experiments are one training when their resolved configs agree on everything but names,
groups, output locations and the EMA weights they report: EMA never changes the trained
weights, it only chooses which weights are evaluated, so one training that keeps several EMA
shadows (`ema_rates`) serves every rate at once. The identity is computed from the configs
themselves, so editing any training setting of a row makes it a distinct training.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from training.config import PretrainConfig

# Where a run writes and what it is called: none of it changes the trained weights.
NON_TRAINING_KEYS = ("experiment_name", "experiment_group", "run_dir", "checkpoint_root", "wandb", "distributed")
EMA_KEYS = ("ema", "ema_rate", "ema_rates")
RAW = "raw"  # the weighting of a run without EMA: the raw weights

# Whether the trainer can keep several EMA shadows in one run (issue 10). Until it can, runs that
# differ in their EMA rate are separate trainings.
MULTI_EMA = "ema_rates" in PretrainConfig.model_fields


def training_key(cfg: Mapping[str, Any]) -> str:
    """Short hash of the settings that determine the trained weights."""
    body = {k: v for k, v in cfg.items() if k not in NON_TRAINING_KEYS + EMA_KEYS + ("hydra",)}
    if cfg.get("data_generator") == "smoke":
        body.pop("data_paths", None)  # generated inside each run_dir from (smoke.num_puzzles, seed)
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:12]


def weighting(cfg: Mapping[str, Any]) -> str:
    """The weights a run evaluates and reports: RAW or 'ema <rate>'."""
    return f"ema {cfg['ema_rate']:g}" if cfg.get("ema") else RAW


def evaluated_weightings(cfg: Mapping[str, Any]) -> set[str]:
    """Every weighting a finished training evaluated (several with `ema_rates`)."""
    rates = cfg.get("ema_rates") or []
    return {weighting(cfg), *({RAW} | {f"ema {r:g}" for r in rates} if rates else set())}


@dataclass(frozen=True)
class Training:
    """One training and the experiments it serves."""

    canonical: str  # the experiment whose name, run_dir and checkpoints the training uses
    members: tuple[str, ...]  # every experiment it serves, canonical first, in table order
    weightings: tuple[str, ...]  # the weightings its members report, in first-use order
    replica: int = 0  # with replicate=True: k-th training of the same settings, seed + k

    def ema_rates(self) -> list[float]:
        return [float(w.split()[1]) for w in self.weightings if w != RAW]


def _joins(training: Training, w: str, *, multi_ema: bool, replicate: bool) -> bool:
    if replicate:  # an exact duplicate becomes a replica; another weighting can still share
        return multi_ema and w not in training.weightings
    return multi_ema or w in training.weightings


def group_trainings(
    configs: Mapping[str, Mapping[str, Any]], *, multi_ema: bool = MULTI_EMA, replicate: bool = False
) -> dict[str, Training]:
    """Map each experiment (in the given order) to the training that serves it.

    An experiment joins the first earlier training with the same key when that training can
    report its weighting: the same weighting, or any with `multi_ema`. With `replicate`,
    exact duplicates (same key and weighting) become separate trainings (replicas) instead.
    """
    trainings: list[tuple[str, Training]] = []
    for name, cfg in configs.items():
        key, w = training_key(cfg), weighting(cfg)
        same = [i for i, (k, _) in enumerate(trainings) if k == key]
        i = next((i for i in same if _joins(trainings[i][1], w, multi_ema=multi_ema, replicate=replicate)), None)
        if i is None:
            replica = sum(w in trainings[j][1].weightings for j in same)
            trainings.append((key, Training(name, (name,), (w,), replica)))
        else:
            t = trainings[i][1]
            weightings = t.weightings if w in t.weightings else (*t.weightings, w)
            trainings[i] = (key, Training(t.canonical, (*t.members, name), weightings, t.replica))
    return {member: t for _, t in trainings for member in t.members}
