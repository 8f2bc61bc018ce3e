"""The scaling study and the paper's recipes, as data: one row per run.

`generate_configs.py` turns this table into `configs/experiments/*.yaml` (and the experiment
list in docs/scaling_study.md); the runners, the planner and the analysis read it for names,
groups and dataset paths. Each study experiment is the baseline plus exactly the changes in its
row, so a row says what the experiment varies and nothing else. The paper's recipes (group
`paper`) stand alone: each spells out every setting of the official README's training command.
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

# Intermediate evaluations of the study run on this many test puzzles, the final one on the whole
# test set; docs/scaling_study.md ("Evaluation cost") gives the standard-error arithmetic.
EVAL_SUBSET = 24_576
# training/config.py has `eval_subset`: the study's configs carry the value (generate_configs.py).
CONFIGS_HAVE_EVAL_SUBSET = True


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
    **({"eval_subset": EVAL_SUBSET} if CONFIGS_HAVE_EVAL_SUBSET else {}),
}


@dataclass(frozen=True)
class Experiment:
    name: str
    group: str
    description: str
    # Dotted keys, relative to BASELINE; for a standalone row, every setting (relative to cfg_pretrain).
    changes: dict[str, Any] = field(default_factory=dict)
    standalone: bool = False
    notes: tuple[str, ...] = ()  # extra header lines of the generated config


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


# The official code's settings that its README's training commands leave at their defaults
# (config/cfg_pretrain.yaml and config/arch/trm.yaml of SamsungSAILMontreal/TinyRecursiveModels
# at e7b6871), spelled out so that a change of this project's defaults cannot move a recipe.
_OFFICIAL_DEFAULTS: dict[str, Any] = {
    "data_paths_test": [],
    "evaluators": [{"name": "arc", "submission_K": 2, "pass_Ks": [1, 2, 5, 10, 100, 1000], "aggregated_voting": True}],
    "arch.loss_type": "stablemax_cross_entropy",
    "arch.halt_exploration_prob": 0.1,
    "arch.halt_max_steps": 16,
    "arch.H_cycles": 3,
    "arch.L_cycles": 6,
    "arch.L_layers": 2,
    "arch.hidden_size": 512,
    "arch.num_heads": 8,
    "arch.expansion": 4,
    "arch.puzzle_emb_ndim": 512,
    "arch.puzzle_emb_len": 16,
    "arch.pos_encodings": "rope",
    "arch.forward_dtype": "bfloat16",
    "arch.mlp_t": False,
    "arch.no_ACT_continue": True,
    "global_batch_size": 768,
    "epochs": 100000,
    "eval_interval": 10000,
    "min_eval_interval": 0,
    "optimizer": "adam_atan2",
    "lr": 1.0e-4,
    "lr_min_ratio": 1.0,
    "lr_warmup_steps": 2000,
    "beta1": 0.9,
    "beta2": 0.95,
    "weight_decay": 0.1,
    "puzzle_emb_lr": 1.0e-2,
    "puzzle_emb_weight_decay": 0.1,
    "freeze_weights": False,
    "ema": False,
    "ema_rate": 0.999,
    "seed": 0,
    "curriculum.enabled": False,
    "halt_exploration_schedule.enabled": False,
}
# What the Sudoku and maze commands override (ARC keeps the defaults above).
_SMALL_DATA = {
    "evaluators": [],
    "epochs": 50000,
    "eval_interval": 5000,
    "lr": 1.0e-4,
    "puzzle_emb_lr": 1.0e-4,
    "weight_decay": 1.0,
    "puzzle_emb_weight_decay": 1.0,
}


def _arc_build(version: int) -> str:
    train, test = ("training", "evaluation") if version == 1 else ("training2", "evaluation2")
    return (
        "python dataset/build_arc_dataset.py --input-file-prefix ../shared/data/arc/arc-agi "
        f"--output-dir data/arc{version}concept-aug-1000 --subsets {train} {test} concept "
        f"--test-set-name {test} --num-aug 1000"
    )


def _paper(
    name: str, description: str, *, reported: str, hardware: str, data: str, build: str, changes: dict[str, Any]
) -> Experiment:
    notes = (
        f"Paper (arXiv 2510.04871) reports: {reported}",
        f"Official README: {hardware}",
        f"Dataset: {build}",
    )
    settings = {"data_paths": [data], **_OFFICIAL_DEFAULTS, **changes, "ema": True}  # every command sets ema=True
    return Experiment(name, "paper", description, settings, standalone=True, notes=notes)


_SUDOKU = {"data": BASELINE_DATA, "build": build_command(BASELINE_PUZZLES, BASELINE_AUG)}
PAPER: list[Experiment] = [
    _paper(
        "paper_sudoku_mlp_t",
        "TRM-MLP on Sudoku-Extreme 1k x 1000 (official run pretrain_mlp_t_sudoku)",
        reported="87.4% exact accuracy on the Sudoku-Extreme test set",
        hardware="1 L40S GPU, under 36 hours",
        changes={**_SMALL_DATA, "arch.mlp_t": True, "arch.pos_encodings": "none"},
        **_SUDOKU,
    ),
    _paper(
        "paper_sudoku_att",
        "TRM-Att on Sudoku-Extreme 1k x 1000 (official run pretrain_att_sudoku)",
        reported="74.7% exact accuracy on the Sudoku-Extreme test set",
        hardware="1 L40S GPU, under 36 hours",
        changes=_SMALL_DATA,
        **_SUDOKU,
    ),
    _paper(
        "paper_maze_att",
        "TRM-Att on Maze-Hard 30x30, 1000 mazes, no augmentation (official run pretrain_att_maze30x30)",
        reported="85.3% exact accuracy on the Maze-Hard test set",
        hardware="4 L40S GPUs, under 24 hours",
        data="data/maze-30x30-hard-1k",
        # The official build of this path has no augmentation; its CSVs are sapientinc/maze-30x30-hard-1k.
        build="python dataset/build_maze_dataset.py --source data/maze-30x30-hard-1k-csv "
        "--output-dir data/maze-30x30-hard-1k",
        changes={**_SMALL_DATA, "arch.L_cycles": 4},
    ),
    _paper(
        "paper_arc1",
        "TRM-Att on ARC-AGI-1 + ConceptARC, 1000 augmentations (official run pretrain_att_arc1concept_4)",
        reported="44.6% pass@2 on the ARC-AGI-1 evaluation set",
        hardware="4 H100 GPUs, about 3 days",
        data="data/arc1concept-aug-1000",
        build=_arc_build(1),
        changes={"arch.L_cycles": 4},
    ),
    _paper(
        "paper_arc2",
        "TRM-Att on ARC-AGI-2 + ConceptARC, 1000 augmentations (official run pretrain_att_arc2concept_4)",
        reported="7.8% pass@2 on the ARC-AGI-2 evaluation set",
        hardware="4 H100 GPUs, about 3 days",
        data="data/arc2concept-aug-1000",
        build=_arc_build(2),
        changes={"arch.L_cycles": 4},
    ),
]

# The study: the baseline and its 67 variations; `run_batch.py` runs these by default. The
# baseline is the one training that exp01c, exp02a_03, ... share (experiments/dedup.py).
STUDY: list[Experiment] = _build()
EXPERIMENTS: list[Experiment] = STUDY + PAPER
BY_NAME: dict[str, Experiment] = {e.name: e for e in EXPERIMENTS}
GROUPS: list[str] = list(dict.fromkeys(e.group for e in EXPERIMENTS))


def datasets() -> list[tuple[int, int]]:
    """Every (puzzles, augmentations) dataset the study trains on, in table order."""
    cells = [parse_dataset_path(BASELINE_DATA)]
    for e in STUDY:
        for p in e.changes.get("data_paths", []):
            cells.append(parse_dataset_path(p))
    return list(dict.fromkeys(c for c in cells if c is not None))


def resolved(exp: Experiment) -> dict[str, Any]:
    """The flat dotted-key settings the experiment trains with (baseline + its changes)."""
    base = {} if exp.standalone else BASELINE
    return {**base, **exp.changes, "experiment_group": exp.group, "experiment_name": exp.name}


def planned_eval_subset(name: str) -> int | None:
    """The subset size of a study run's intermediate evaluations (None: the full test set)."""
    exp = BY_NAME.get(name)
    return EVAL_SUBSET if exp is not None and not exp.standalone else None
