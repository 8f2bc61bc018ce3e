"""End to end through the CLI: a short quick-start run learns, and writes every run output."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _run(tmp_path, *overrides, timeout=600):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [
        sys.executable,
        "pretrain_jax.py",
        *overrides,
        f"run_dir={tmp_path / 'run'}",
        f"data_paths=[{tmp_path / 'data'}]",
    ]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quickstart_learns_and_writes_outputs(tmp_path):
    out = _run(tmp_path, "epochs=20", "eval_interval=10", "log_every_steps=20")
    assert out.returncode == 0, out.stderr[-4000:]
    run = tmp_path / "run"
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "train/lm_loss" in r]
    evals = [r for r in rows if "eval/all/exact_accuracy" in r]
    assert train[-1]["train/lm_loss"] < 0.6 * train[0]["train/lm_loss"]
    # 6-10 blanks with 4 candidates each: guessing solves fewer than 1 in 4000 puzzles.
    assert evals[-1]["eval/all/exact_accuracy"] > 0.02
    assert evals[-1]["eval/all/accuracy"] > evals[0]["eval/all/accuracy"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == summary["total_steps"] == train[-1]["step"]
    assert summary["final_metrics"]["eval/all/exact_accuracy"] == evals[-1]["eval/all/exact_accuracy"]
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["epochs"] == 20 and resolved["arch"]["puzzle_emb_ndim"] == resolved["arch"]["hidden_size"]
    assert (run / "checkpoints" / str(summary["step"])).is_dir()
    assert "final evaluation" in out.stdout + out.stderr


@pytest.mark.timeout(600)
def test_max_steps_stops_early_evaluates_saves_and_logs_offline(tmp_path):
    out = _run(
        tmp_path,
        "max_steps=3",
        "arch.hidden_size=32",
        "arch.num_heads=2",
        "global_batch_size=16",
        "log_every_steps=1",
        "wandb.mode=offline",
    )
    assert out.returncode == 0, out.stderr[-4000:]
    # W&B offline needs no network and keeps its run next to the other outputs.
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["step"] == 3 < summary["total_steps"]
    assert "eval/all/exact_accuracy" in summary["final_metrics"]
    assert (tmp_path / "run" / "checkpoints" / "3").is_dir()


@pytest.mark.timeout(120)
def test_missing_dataset_says_how_to_build_it(tmp_path):
    out = _run(tmp_path, "data_generator=null")
    assert out.returncode != 0
    assert "build the dataset" in out.stderr and str(tmp_path / "data") in out.stderr


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_arc_run_reports_pass_at_k_and_writes_submission(tmp_path):
    from arc_fixtures import write_tiny_arc

    write_tiny_arc(str(tmp_path / "arc"))
    build = subprocess.run(
        [
            sys.executable,
            "dataset/build_arc_dataset.py",
            "--input-file-prefix",
            str(tmp_path / "arc"),
            "--output-dir",
            str(tmp_path / "data"),
            "--subsets",
            "training",
            "evaluation",
            "--test-set-name",
            "evaluation",
            "--num-aug",
            "2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    out = _run(
        tmp_path,
        "--config-name",
        "cfg_pretrain",
        "data_generator=null",
        "evaluators=[{name:arc}]",
        "max_steps=2",
        "global_batch_size=8",
        "arch.hidden_size=32",
        "arch.num_heads=2",
        "arch.puzzle_emb_len=1",
        "arch.H_cycles=1",
        "arch.L_cycles=1",
        "arch.L_layers=1",
        "arch.halt_max_steps=2",
        "arch.forward_dtype=float32",
    )
    assert out.returncode == 0, out.stderr[-4000:]
    final = json.loads((tmp_path / "run" / "summary.json").read_text())["final_metrics"]
    for k in (1, 2, 5, 10, 100, 1000):
        assert 0.0 <= final[f"eval/ARC/pass@{k}"] <= 1.0
    submission = json.loads((tmp_path / "run" / "eval_step_2" / "submission.json").read_text())
    tasks = json.loads((tmp_path / "arc_evaluation_challenges.json").read_text())
    assert set(submission) == set(tasks)
    assert all(set(att) == {"attempt_1", "attempt_2"} for task in submission.values() for att in task)
