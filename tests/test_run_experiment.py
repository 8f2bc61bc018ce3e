"""experiments/run_experiment.py: validation, description, and how training is launched."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from experiments import run_experiment
from models.trm import num_parameters
from training.config import compose, validate


@pytest.fixture
def launched(monkeypatch):
    """Record launches instead of training; the fake training exits with code 3."""
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append((cmd, kwargs))
        return subprocess.CompletedProcess(cmd, 3)

    monkeypatch.setattr(run_experiment.subprocess, "run", fake_run)
    return calls


def test_dry_run_describes_without_launching(launched, capsys):
    assert run_experiment.main(["exp01b", "--dry-run", "wandb.mode=offline"]) == 0
    out = capsys.readouterr().out
    assert launched == []
    assert "hidden_size: 384" in out and "experiment_name: exp01b" in out
    # No dataset under data/ in the test tree: the official Sudoku-Extreme sizes stand in.
    assert "official size (Sudoku-Extreme); data/sudoku-extreme-1k-aug-1000 not built yet" in out
    cfg = validate(compose("exp01b"))
    total = sum(num_parameters(cfg.arch, vocab_size=11, seq_len=81, num_puzzle_identifiers=1).values())
    assert f"# parameters: {total:,}" in out
    assert f"# total steps: {int(50000 * 1000 / 6144):,}" in out
    assert "training +" in out and "10 evaluations x 16 ACT steps over 422,786 test examples" in out
    assert "runs/exp01/exp01b/checkpoints" in out and "project trm-exp01 (mode offline)" in out


def _write_split(root, split: str, **meta) -> None:
    (root / split).mkdir(parents=True)
    base = {"pad_id": 0, "ignore_label_id": 0, "blank_identifier_id": 0, "sets": ["all"]}
    (root / split / "dataset.json").write_text(json.dumps({**base, **meta}))


def test_dry_run_reads_dataset_metadata(tmp_path, capsys):
    meta = {"vocab_size": 13, "seq_len": 81, "num_puzzle_identifiers": 5, "total_groups": 250, "total_puzzles": 250}
    _write_split(tmp_path / "ds", "train", mean_puzzle_examples=1001.0, **meta)
    assert run_experiment.main(["exp06_f", f"data_paths=[{tmp_path / 'ds'}]", "--dry-run"]) == 0
    out = capsys.readouterr().out
    cfg = validate(compose("exp06_f"))
    steps = int(cfg.epochs * meta["total_groups"] * 1001.0 / cfg.global_batch_size)
    assert f"# total steps: {steps:,}" in out
    n = num_parameters(cfg.arch, vocab_size=13, seq_len=81, num_puzzle_identifiers=5)
    assert f"puzzle_emb {n['puzzle_emb']:,}" in out and n["puzzle_emb"] == 5 * cfg.arch.puzzle_emb_ndim
    assert "no test split, so no evaluation" in out and "(0 evaluations" in out

    _write_split(tmp_path / "ds", "test", mean_puzzle_examples=1.0, **{**meta, "total_puzzles": 77})
    assert run_experiment.main(["exp06_f", f"data_paths=[{tmp_path / 'ds'}]", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "over 77 test examples" in out and "sizes from dataset metadata)" in out


@pytest.mark.parametrize(
    "args", [["no_such_experiment"], ["exp01a", "arch.hidden_sise=3"], ["exp01a", "lr_min_ratio=2"]]
)
def test_bad_configs_fail_before_launch(args, launched, capsys):
    assert run_experiment.main(args) == 2
    assert launched == []
    assert args[0] in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], [sys.executable, "pretrain_jax.py", "--config-name", "exp09e", "lr=3e-4"]),
        (
            ["--num-processes", "4"],
            [
                sys.executable,
                "scripts/launch_local.py",
                "--num-processes",
                "4",
                "--",
                "--config-name",
                "exp09e",
                "lr=3e-4",
            ],
        ),
        (["--tpu"], ["bash", "scripts/tpu/launch.sh", "exp09e", "lr=3e-4"]),
        (["--tpu-name", "pod-a"], ["bash", "scripts/tpu/launch.sh", "--tpu", "pod-a", "exp09e", "lr=3e-4"]),
    ],
)
def test_launch_command_and_exit_code(flags, expected, launched):
    assert run_experiment.main(["exp09e", "lr=3e-4", *flags]) == 3  # training's exit code
    ((cmd, kwargs),) = launched
    assert cmd == expected
    assert kwargs["cwd"] == run_experiment.ROOT


def test_launchers_exist():
    for script in ("pretrain_jax.py", "scripts/launch_local.py", "scripts/tpu/launch.sh"):
        assert (run_experiment.ROOT / script).is_file(), script


@pytest.mark.slow
def test_trains_end_to_end(tmp_path):
    proc = subprocess.run(
        [sys.executable, "experiments/run_experiment.py", "exp08a", "smoke.enabled=true", f"run_dir={tmp_path}"],
        cwd=run_experiment.ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "completed"
