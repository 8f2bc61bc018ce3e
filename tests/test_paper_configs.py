"""The paper's recipes (configs/experiments/paper_*.yaml) train exactly what the official README's
training commands train.

The expected settings below are transcribed here, independently of experiments/table.py, from
the official README (SamsungSAILMontreal/TinyRecursiveModels at e7b6871) and, for every setting
its commands leave alone, from the official config/cfg_pretrain.yaml and config/arch/trm.yaml.
A change of this project's defaults therefore cannot move a recipe without failing here.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from experiments import run_batch, run_experiment
from experiments.table import BY_NAME, PAPER
from training.config import compose, validate

ARC_EVALUATOR = {"name": "arc", "submission_K": 2, "pass_Ks": [1, 2, 5, 10, 100, 1000], "aggregated_voting": True}
OFFICIAL_DEFAULTS = {
    "global_batch_size": 768,
    "epochs": 100000,
    "eval_interval": 10000,
    "min_eval_interval": 0,
    "lr": 1e-4,
    "lr_min_ratio": 1.0,
    "lr_warmup_steps": 2000,
    "beta1": 0.9,
    "beta2": 0.95,
    "weight_decay": 0.1,
    "puzzle_emb_weight_decay": 0.1,
    "puzzle_emb_lr": 1e-2,
    "seed": 0,
    "ema_rate": 0.999,
    "freeze_weights": False,
    "optimizer": "adam_atan2",
    "data_paths_test": [],
    "evaluators": [ARC_EVALUATOR],
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
}
SMALL_DATA = {
    "evaluators": [],
    "epochs": 50000,
    "eval_interval": 5000,
    "lr": 1e-4,
    "puzzle_emb_lr": 1e-4,
    "weight_decay": 1.0,
    "puzzle_emb_weight_decay": 1.0,
}
README = {
    "paper_sudoku_mlp_t": {
        **SMALL_DATA,
        "data_paths": ["data/sudoku-extreme-1k-aug-1000"],
        "arch.mlp_t": True,
        "arch.pos_encodings": "none",
        "arch.L_layers": 2,
        "arch.H_cycles": 3,
        "arch.L_cycles": 6,
        "ema": True,
    },
    "paper_sudoku_att": {
        **SMALL_DATA,
        "data_paths": ["data/sudoku-extreme-1k-aug-1000"],
        "arch.L_layers": 2,
        "arch.H_cycles": 3,
        "arch.L_cycles": 6,
        "ema": True,
    },
    "paper_maze_att": {
        **SMALL_DATA,
        "data_paths": ["data/maze-30x30-hard-1k"],
        "arch.L_layers": 2,
        "arch.H_cycles": 3,
        "arch.L_cycles": 4,
        "ema": True,
    },
    "paper_arc1": {
        "data_paths": ["data/arc1concept-aug-1000"],
        "arch.L_layers": 2,
        "arch.H_cycles": 3,
        "arch.L_cycles": 4,
        "ema": True,
    },
    "paper_arc2": {
        "data_paths": ["data/arc2concept-aug-1000"],
        "arch.L_layers": 2,
        "arch.H_cycles": 3,
        "arch.L_cycles": 4,
        "ema": True,
    },
}
# What the paper reports for each (test exact accuracy; pass@2 for ARC).
REPORTED = {
    "paper_sudoku_mlp_t": "87.4%",
    "paper_sudoku_att": "74.7%",
    "paper_maze_att": "85.3%",
    "paper_arc1": "44.6% pass@2",
    "paper_arc2": "7.8% pass@2",
}
# Training examples per epoch (groups x mean examples per puzzle) of each dataset as built.
EXAMPLES_PER_EPOCH = {"data/sudoku-extreme-1k-aug-1000": 1000, "data/maze-30x30-hard-1k": 1000}


def _get(dump: dict, dotted: str):
    for part in dotted.split("."):
        dump = dump[part]
    return dump


def test_the_recipes_are_the_papers_runs():
    assert sorted(e.name for e in PAPER) == sorted(README)
    assert {e.group for e in PAPER} == {"paper"}


@pytest.mark.parametrize("name", sorted(README))
def test_settings_match_the_official_command(name):
    dump = validate(compose(name)).model_dump()
    for key, value in {**OFFICIAL_DEFAULTS, **README[name]}.items():
        assert _get(dump, key) == value, (name, key)
    assert not dump["curriculum"]["enabled"] and not dump["halt_exploration_schedule"]["enabled"]


@pytest.mark.parametrize("name", sorted(README))
def test_header_reports_the_papers_accuracy_and_the_dataset_build(name):
    header = [line for line in (run_experiment.ROOT / f"configs/experiments/{name}.yaml").read_text().splitlines()]
    reports = next(line for line in header if line.startswith("# Paper"))
    assert REPORTED[name] in reports
    build = next(line for line in header if line.startswith("# Dataset: "))
    assert f"--output-dir {README[name]['data_paths'][0]}" in build


def test_arc_builds_match_the_official_subsets():
    for name, (subsets, test_set) in {
        "paper_arc1": ("training evaluation concept", "evaluation"),
        "paper_arc2": ("training2 evaluation2 concept", "evaluation2"),
    }.items():
        notes = " ".join(BY_NAME[name].notes)
        assert f"--subsets {subsets} --test-set-name {test_set} --num-aug 1000" in notes


@pytest.mark.parametrize("name", ["paper_sudoku_mlp_t", "paper_maze_att"])
def test_dry_run_shows_steps_and_flops(name, capsys):
    assert run_experiment.main([name, "--dry-run"]) == 0
    out = capsys.readouterr().out
    steps = int(50000 * EXAMPLES_PER_EPOCH[README[name]["data_paths"][0]] / 768)
    assert f"# total steps: {steps:,}" in out
    assert "training +" in out and "evaluation" in out and "FLOPs" in out


def test_runners_list_them_in_their_own_group(capsys):
    assert run_batch.main(["--list", "--pattern", "paper_*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [[name, "paper"] for name in README]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["paper_sudoku_att", "paper_maze_att"])
def test_smoke_run(name, tmp_path):
    """The attention recipes at both recursion depths. Smoke replaces data and evaluators, so
    the ARC recipes train the maze recipe's program and the MLP-T recipe the study baseline's,
    which tests/test_experiment_configs.py smoke-runs."""
    proc = subprocess.run(
        [sys.executable, "pretrain_jax.py", "--config-name", name, "smoke.enabled=true", f"run_dir={tmp_path}"],
        cwd=run_experiment.ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "completed"
