"""The scaling study, as data: one row per run.

`generate_configs.py` turns this table into `configs/experiments/*.yaml` (and the experiment
list in docs/scaling_study.md); the runners and the analysis read it for names, groups and
dataset paths. Each experiment is the baseline plus exactly the changes in its row, so a row
says what the experiment varies and nothing else.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

BASELINE_NAME = "baseline"
BASELINE_BATCH = 6144
BASELINE_LR = 1.0e-4
BASELINE_PUZZLES = 1000
BASELINE_AUG = 1000
# The official name of the baseline dataset; other (puzzles, augmentations) cells follow
# dataset_path's pattern.
BASELINE_DATA = "data/sudoku-extreme-1k-aug-1000"
FULL_SOURCE = "data/sudoku-extreme-full"

# Every setting the study fixes, spelled out even where it equals the cfg_pretrain default, so
# that a later change of a project default cannot silently move the whole study.
BASELINE: dict[str, Any] = {
    "data_paths": [BASELINE_DATA],
    "evaluators": [],
    "arch.mlp_t": True,
    "arch.pos_encodings": "none",
    "arch.L_layers": 2,
    "arch.H_cycles": 3,
    "arch.L_cycles": 6,
    "arch.hidden_size": 512,
    "arch.num_heads": 8,
    "arch.expansion": 4,
    "arch.puzzle_emb_ndim": 512,
    "arch.forward_dtype": "bfloat16",
    "arch.halt_max_steps": 16,
    "arch.halt_exploration_prob": 0.1,
    "epochs": 50000,
    "eval_interval": 5000,
    "global_batch_size": BASELINE_BATCH,
    "optimizer": "adam_atan2",
    "lr": BASELINE_LR,
    "lr_min_ratio": 1.0,
    "lr_warmup_steps": 2000,
    "weight_decay": 1.0,
    "beta1": 0.9,
    "beta2": 0.95,
    "puzzle_emb_lr": 1.0e-4,
    "puzzle_emb_weight_decay": 1.0,
    "ema": True,
    "ema_rate": 0.999,
    "curriculum.enabled": False,
    "halt_exploration_schedule.enabled": False,
    "experiment_group": "baseline",
    "experiment_name": BASELINE_NAME,
}


@dataclass(frozen=True)
class Experiment:
    name: str
    group: str
    description: str
    changes: dict[str, Any] = field(default_factory=dict)  # dotted keys, relative to BASELINE


def dataset_path(puzzles: int, aug: int) -> str:
    if (puzzles, aug) == (BASELINE_PUZZLES, BASELINE_AUG):
        return BASELINE_DATA
    return f"data/sudoku-extreme-{puzzles}-aug-{aug}"


_DATASET_RE = re.compile(r"sudoku-extreme-(\d+)(k?)-aug-(\d+)")


def parse_dataset_path(path: str) -> tuple[int, int] | None:
    """(training puzzles, augmentations per puzzle) named by a study dataset path, else None."""
    m = _DATASET_RE.search(path)
    if not m:
        return None
    return int(m.group(1)) * (1000 if m.group(2) else 1), int(m.group(3))


def build_command(puzzles: int, aug: int) -> str:
    return (
        f"python dataset/build_sudoku_dataset.py --source {FULL_SOURCE} "
        f"--output-dir {dataset_path(puzzles, aug)} --subsample-size {puzzles} --num-aug {aug}"
    )


def _letters(prefix: str, rows: list[tuple[str, dict[str, Any]]], group: str, sep: str = "") -> list[Experiment]:
    return [
        Experiment(f"{prefix}{sep}{chr(ord('a') + i)}", group, desc, changes) for i, (desc, changes) in enumerate(rows)
    ]


def _numbered(prefix: str, rows: list[tuple[str, dict[str, Any]]], group: str) -> list[Experiment]:
    return [Experiment(f"{prefix}_{i + 1:02d}", group, desc, ch) for i, (desc, ch) in enumerate(rows)]


def _batch_row(batch: int) -> tuple[str, dict[str, Any]]:
    # sqrt scaling keeps the update noise roughly constant as the batch grows (Adam-type rule).
    lr = BASELINE_LR * math.sqrt(batch / BASELINE_BATCH)
    return f"global batch {batch}, lr = puzzle_emb_lr = {lr:.3g}", {
        "global_batch_size": batch,
        "lr": lr,
        "puzzle_emb_lr": lr,
    }


def _build() -> list[Experiment]:
    exps = [Experiment(BASELINE_NAME, "baseline", "the study baseline (TRM MLP-T on Sudoku-Extreme 1k x 1000)")]
    exps += _letters(
        "exp01",
        [
            (f"hidden {h}, {n} heads", {"arch.hidden_size": h, "arch.num_heads": n, "arch.puzzle_emb_ndim": h})
            for h, n in [(256, 4), (384, 6), (512, 8), (768, 8), (1024, 8), (1536, 8)]
        ],
        "exp01",
    )
    exps += _numbered("exp02a", [(f"L_cycles {c}", {"arch.L_cycles": c}) for c in (2, 4, 6, 8, 10, 12)], "exp02a")
    exps += _numbered("exp02b", [(f"H_cycles {c}", {"arch.H_cycles": c}) for c in (1, 2, 3, 4, 5)], "exp02b")
    exps += _letters(
        "exp03",
        [
            (f"L_layers {l}, L_cycles {c}", {"arch.L_layers": l, "arch.L_cycles": c})
            for l, c in [(1, 12), (2, 6), (3, 4), (4, 3), (6, 2)]
        ],
        "exp03",
    )
    exps += [
        Experiment(
            f"exp04a_{n}",
            "exp04a",
            f"{n} training puzzles x {BASELINE_AUG} augmentations",
            {"data_paths": [dataset_path(n, BASELINE_AUG)]},
        )
        for n in (100, 250, 500, 1000, 2000, 5000)
    ]
    exps += [
        Experiment(
            f"exp04b_{k:04d}",
            "exp04b",
            f"{BASELINE_PUZZLES} training puzzles x {k} augmentations",
            {"data_paths": [dataset_path(BASELINE_PUZZLES, k)]},
        )
        for k in (10, 100, 500, 1000, 2000)
    ]
    exps += _letters(
        "exp05", [(f"halt_max_steps {s}", {"arch.halt_max_steps": s}) for s in (4, 8, 12, 16, 24, 32)], "exp05", sep="_"
    )
    exps += _letters("exp06", [_batch_row(b) for b in (1536, 3072, 6144, 12288, 24576, 49152)], "exp06", sep="_")
    exps += _letters(
        "exp07",
        [
            ("forward dtype float32", {"arch.forward_dtype": "float32"}),
            ("forward dtype bfloat16", {"arch.forward_dtype": "bfloat16"}),
            ("forward dtype float16 (dynamic loss scaling from loss_scale_init)", {"arch.forward_dtype": "float16"}),
        ],
        "exp07",
    )
    exps += _letters(
        "exp08",
        [("EMA off", {"ema": False})]
        + [(f"EMA rate {r}", {"ema": True, "ema_rate": r}) for r in (0.99, 0.995, 0.999, 0.9995)],
        "exp08",
    )
    exps += _letters(
        "exp09",
        [
            (f"{opt} betas ({b1}, {b2})", {"optimizer": opt, "beta1": b1, "beta2": b2})
            for opt, b1, b2 in [
                ("adam_atan2", 0.9, 0.95),
                ("adamw", 0.9, 0.95),
                ("adamw", 0.9, 0.99),
                ("adamw", 0.9, 0.999),
                ("lion", 0.9, 0.99),
            ]
        ],
        "exp09",
    )
    exps += _letters(
        "exp10",
        [
            (f"lr {lr:g}, lr_min_ratio {r:g}", {"lr": lr, "lr_min_ratio": r})
            for lr, r in [(3.0e-5, 1.0), (1.0e-4, 1.0), (3.0e-4, 1.0), (1.0e-4, 0.1), (1.0e-4, 0.01)]
        ],
        "exp10",
    )
    exps += [
        Experiment("contrib01_baseline", "contrib01", "fixed recursion depth (control)", {}),
        Experiment(
            "contrib01_curriculum",
            "contrib01",
            "recursion curriculum: L_cycles 2->6, H_cycles 1->3 over the first 10000 epochs",
            {
                "curriculum.enabled": True,
                "curriculum.start_L_cycles": 2,
                "curriculum.start_H_cycles": 1,
                "curriculum.epochs": 10000,
            },
        ),
        Experiment("contrib02_baseline", "contrib02", "halt_exploration_prob fixed at 0.1 (control)", {}),
        Experiment(
            "contrib02_adaptive",
            "contrib02",
            "halt_exploration_prob annealed 0.3 -> 0.05 over the run",
            {
                "halt_exploration_schedule.enabled": True,
                "halt_exploration_schedule.start": 0.3,
                "halt_exploration_schedule.end": 0.05,
            },
        ),
    ]
    return exps


EXPERIMENTS: list[Experiment] = _build()
BY_NAME: dict[str, Experiment] = {e.name: e for e in EXPERIMENTS}
# What `run_batch.py` runs by default: the study's runs. The baseline config is their common
# base; exp01c, exp02a_03, ... already train exactly the baseline inside their groups.
STUDY: list[Experiment] = [e for e in EXPERIMENTS if e.name != BASELINE_NAME]
GROUPS: list[str] = list(dict.fromkeys(e.group for e in EXPERIMENTS))


def datasets() -> list[tuple[int, int]]:
    """Every (puzzles, augmentations) dataset the study trains on, in table order."""
    cells = [parse_dataset_path(BASELINE_DATA)]
    for e in EXPERIMENTS:
        for p in e.changes.get("data_paths", []):
            cells.append(parse_dataset_path(p))
    return list(dict.fromkeys(c for c in cells if c is not None))


def resolved(exp: Experiment) -> dict[str, Any]:
    """The flat dotted-key settings the experiment trains with (baseline + its changes)."""
    return {**BASELINE, **exp.changes, "experiment_group": exp.group, "experiment_name": exp.name}
