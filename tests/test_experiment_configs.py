"""Every experiment config composes, validates, says what the study says, and trains.

The smoke runs (marked slow) train one experiment per group through pretrain_jax.py with
`smoke.enabled=true`: tiny model, 4 steps, generated data.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import yaml

from experiments import run_experiment
from experiments.table import BASELINE_NAME, BY_NAME, EXPERIMENTS, GROUPS, parse_dataset_path, resolved
from training.config import apply_smoke, compose, validate

ROOT = run_experiment.ROOT


def _get(dump: dict, dotted: str):
    for part in dotted.split("."):
        dump = dump[part]
    return dump


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.fixture(scope="module")
def configs() -> dict[str, dict]:
    return {e.name: validate(compose(e.name)).model_dump() for e in EXPERIMENTS}


def test_each_config_trains_what_the_table_says(configs):
    for exp in EXPERIMENTS:
        for key, value in resolved(exp).items():
            assert _get(configs[exp.name], key) == value, (exp.name, key)


def test_each_experiment_changes_only_what_it_names(configs):
    base = _flat(configs[BASELINE_NAME])
    for exp in (e for e in EXPERIMENTS if not e.standalone):  # the paper's recipes: tests/test_paper_configs.py
        diff = {k for k, v in _flat(configs[exp.name]).items() if base[k] != v}
        assert diff <= set(exp.changes) | {"experiment_group", "experiment_name"}, exp.name


def test_baseline_is_the_study_baseline(configs):
    c = configs[BASELINE_NAME]
    a = c["arch"]
    assert c["data_paths"] == ["data/sudoku-extreme-1k-aug-1000"]
    assert (a["mlp_t"], a["pos_encodings"], a["L_layers"], a["H_cycles"], a["L_cycles"]) == (True, "none", 2, 3, 6)
    assert (a["hidden_size"], a["num_heads"], a["expansion"], a["forward_dtype"]) == (512, 8, 4, "bfloat16")
    assert (a["halt_max_steps"], a["halt_exploration_prob"]) == (16, 0.1)
    assert (c["epochs"], c["eval_interval"], c["global_batch_size"]) == (50000, 5000, 6144)
    assert (c["lr"], c["lr_min_ratio"], c["lr_warmup_steps"], c["weight_decay"]) == (1e-4, 1.0, 2000, 1.0)
    assert (c["optimizer"], c["beta1"], c["beta2"]) == ("adam_atan2", 0.9, 0.95)
    assert (c["puzzle_emb_lr"], c["puzzle_emb_weight_decay"], c["ema"], c["ema_rate"]) == (1e-4, 1.0, True, 0.999)
    assert not c["curriculum"]["enabled"] and not c["halt_exploration_schedule"]["enabled"]


def test_dataset_names():
    assert parse_dataset_path("data/sudoku-extreme-100-aug-1000") == (100, 1000)
    assert parse_dataset_path("gs://b/data/sudoku-extreme-1k-aug-1000") == (1000, 1000)
    assert parse_dataset_path("data/quickstart-sudoku4") is None


def test_study_rules(configs):
    for name, c in configs.items():
        if c["experiment_group"] == "exp01":
            assert c["arch"]["puzzle_emb_ndim"] == c["arch"]["hidden_size"]
        if c["experiment_group"] == "exp06":
            expected = 1e-4 * math.sqrt(c["global_batch_size"] / 6144)
            assert c["lr"] == pytest.approx(expected) and c["puzzle_emb_lr"] == pytest.approx(expected)
        if c["experiment_group"] == "exp04a":  # exp04a_<puzzles>, 1000 augmentations each
            assert parse_dataset_path(c["data_paths"][0]) == (int(name.split("_")[1]), 1000)
        if c["experiment_group"] == "exp04b":  # exp04b_<augmentations>, 1000 puzzles
            assert parse_dataset_path(c["data_paths"][0]) == (1000, int(name.split("_")[1]))
    assert configs["contrib01_curriculum"]["curriculum"] == {
        "enabled": True,
        "start_L_cycles": 2,
        "start_H_cycles": 1,
        "epochs": 10000,
    }
    assert configs["contrib02_adaptive"]["halt_exploration_schedule"] == {"enabled": True, "start": 0.3, "end": 0.05}
    assert configs["exp07c"]["arch"]["forward_dtype"] == "float16"


def test_every_experiment_dry_runs(capsys):
    for exp in EXPERIMENTS:
        assert run_experiment.main([exp.name, "--dry-run"]) == 0, exp.name
        out = capsys.readouterr().out
        assert f"experiment_name: {exp.name}" in out and "# parameters: " in out
        assert f"--config-name {exp.name}" in out


def _smoke_program(name: str) -> dict:
    """What a smoke run of `name` trains, minus its names and data (smoke generates the data)."""
    dump = validate(apply_smoke(compose(name, ["smoke.enabled=true"]))).model_dump()
    for key in ("experiment_name", "experiment_group", "data_paths", "run_dir"):
        dump.pop(key)
    return dump


def _code_path(program: dict) -> str:
    """The program with every number blanked: two configs that differ only in numbers (lr,
    cycles, layers, EMA rate) run the same code, only with other constants."""

    def blank(v):
        if isinstance(v, dict):
            return {k: blank(x) for k, x in v.items()}
        if isinstance(v, list):
            return [blank(x) for x in v]
        return "#" if isinstance(v, int | float) and not isinstance(v, bool) else v

    return json.dumps(blank(program), sort_keys=True)


def _smoke_runs() -> list[str]:
    """The last experiment of each group (the one furthest from the baseline), unless its smoke run
    takes the code path of an earlier one: what is left are the baseline and the groups that
    switch code (float16 in exp07, Lion in exp09, the two contributions). Each costs ~10 s, mostly
    XLA compilation; every config is still composed and validated by the dry-run test above."""
    chosen: dict[str, str] = {}
    for group in (g for g in GROUPS if g != "paper"):  # smoke-run by tests/test_paper_configs.py
        name = [e.name for e in EXPERIMENTS if e.group == group][-1]
        chosen.setdefault(_code_path(_smoke_program(name)), name)
    return list(chosen.values())


@pytest.mark.slow
@pytest.mark.parametrize("name", _smoke_runs())
def test_smoke_run(name, tmp_path):
    run_dir = tmp_path / name
    proc = subprocess.run(
        [sys.executable, "pretrain_jax.py", "--config-name", name, "smoke.enabled=true", f"run_dir={run_dir}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("train/lm_loss" in x and math.isfinite(x["train/lm_loss"]) for x in lines)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (saved["experiment_name"], saved["experiment_group"]) == (name, BY_NAME[name].group)
