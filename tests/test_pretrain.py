"""End to end: `train(cfg)` in-process (a quick-start run learns and writes every output; a short
loop makes no host transfer inside the train step), and the Hydra entry point's exit codes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from pretrain_jax import NonFiniteError, TrainWindow, train
from training.config import compose, validate

REPO = Path(__file__).resolve().parents[1]
SMALL = ["arch.hidden_size=32", "arch.num_heads=2", "global_batch_size=16", "log_every_steps=1"]


def _cfg(run_dir, data, *overrides, config_name="quickstart"):
    return validate(compose(config_name, [f"data_paths=[{data}]", f"run_dir={run_dir}", *overrides]))


def _rows(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quickstart_learns_and_writes_outputs(tmp_path, data):
    run = tmp_path / "run"
    # Raw weights: an EMA of 0.999 over these 312 steps would still mostly be the initial model.
    result = train(_cfg(run, data, "epochs=20", "eval_interval=10", "log_every_steps=20", "ema=false"))
    assert result.status == "completed" and result.exit_code == 0
    rows = _rows(run)
    train_rows = [r for r in rows if "train/lm_loss" in r]
    evals = [r for r in rows if "eval/all/exact_accuracy" in r]
    assert train_rows[-1]["train/lm_loss"] < 0.6 * train_rows[0]["train/lm_loss"]
    # 6-10 blanks with 4 candidates each: guessing solves fewer than 1 in 4000 puzzles.
    assert evals[-1]["eval/all/exact_accuracy"] > 0.02
    assert evals[-1]["eval/all/accuracy"] > evals[0]["eval/all/accuracy"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == summary["total_steps"] == train_rows[-1]["step"]
    assert summary["final_metrics"] == result.metrics
    assert summary["final_metrics"]["eval/all/exact_accuracy"] == evals[-1]["eval/all/exact_accuracy"]
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["epochs"] == 20 and resolved["arch"]["puzzle_emb_ndim"] == resolved["arch"]["hidden_size"]
    assert (run / "checkpoints" / str(summary["step"])).is_dir()


@pytest.mark.timeout(600)
def test_halting_metrics_are_consistent(tmp_path, data):
    result = train(_cfg(tmp_path / "run", data, *SMALL, "max_steps=6"))
    m = result.metrics
    n = 4  # the quick start's halt_max_steps
    for k in ("accuracy", "exact_accuracy", "q_halt_accuracy"):
        per_step = m[f"eval/all/{k}_per_step"]
        assert len(per_step) == n
        # Evaluation runs every row through all ACT steps: the last step is the ordinary metric.
        assert per_step[-1] == pytest.approx(m[f"eval/all/{k}"], abs=1e-6)
    assert all(0.0 <= f <= 1.0 for f in m["eval/all/halt_fraction_per_step"])
    # Rows stop at their first q_halt > 0, else at step n; the histogram counts every row once.
    hist = np.asarray(m["eval/all/halt_step_hist"])
    assert hist.sum() == m["eval/all/count"]
    assert m["eval/all/adaptive_steps"] == pytest.approx((hist * np.arange(1, n + 1)).sum() / hist.sum())
    train_rows = [r for r in _rows(tmp_path / "run") if "train/lm_loss" in r]
    # Step 1 loads every row; later steps load only the rows that halted.
    assert train_rows[0]["train/new_data_fraction"] == 1.0
    assert all(0.0 <= r["train/new_data_fraction"] <= 1.0 for r in train_rows)


@pytest.mark.timeout(600)
def test_no_host_transfer_inside_the_train_step(tmp_path, data):
    result = train(_cfg(tmp_path / "run", data, *SMALL, "max_steps=3", "transfer_guard=disallow"))
    assert result.status == "completed"
    # The guard is real: an implicit transfer under it fails.
    with pytest.raises(Exception, match="[Dd]isallowed"), jax.transfer_guard("disallow"):
        jax.jit(lambda x: x + 1)(np.float32(1.0))


@pytest.mark.timeout(600)
def test_max_steps_stops_early_evaluates_saves_and_logs_offline(tmp_path, data):
    run = tmp_path / "run"
    result = train(_cfg(run, data, *SMALL, "max_steps=3", "wandb.mode=offline"))
    assert result.status == "completed" and result.step == 3
    # W&B offline needs no network and keeps its run next to the other outputs.
    assert list((run / "wandb").glob("offline-run-*"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 3 < summary["total_steps"]
    assert "eval/all/exact_accuracy" in summary["final_metrics"]
    assert (run / "checkpoints" / "3").is_dir()


@pytest.mark.timeout(120)
def test_missing_dataset_says_how_to_build_it(tmp_path):
    result = train(_cfg(tmp_path / "run", tmp_path / "nowhere", "data_generator=null"))
    assert result.status == "failed" and result.exit_code == 1
    assert "build the dataset" in result.error and str(tmp_path / "nowhere") in result.error


@pytest.mark.timeout(120)
def test_entry_point_reports_errors_in_one_line(tmp_path):
    """The Hydra entry point: exit code 1 and a one-line message, no traceback."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "pretrain_jax.py", f"run_dir={tmp_path / 'run'}", f"data_paths=[{tmp_path / 'x'}]"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("error: ") and str(tmp_path / "x") in out.stderr


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_arc_run_reports_pass_at_k_and_writes_submission(tmp_path):
    from arc_fixtures import write_tiny_arc

    write_tiny_arc(str(tmp_path / "arc"))
    build = subprocess.run(
        [sys.executable, "dataset/build_arc_dataset.py", "--input-file-prefix", str(tmp_path / "arc")]
        + ["--output-dir", str(tmp_path / "data"), "--subsets", "training", "evaluation"]
        + ["--test-set-name", "evaluation", "--num-aug", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    arch = ["arch.hidden_size=32", "arch.num_heads=2", "arch.puzzle_emb_len=1", "arch.H_cycles=1"]
    arch += ["arch.L_cycles=1", "arch.L_layers=1", "arch.halt_max_steps=2", "arch.forward_dtype=float32"]
    cfg = _cfg(
        tmp_path / "run",
        tmp_path / "data",
        "data_generator=null",
        "evaluators=[{name:arc}]",
        "max_steps=2",
        "global_batch_size=8",
        *arch,
        config_name="cfg_pretrain",
    )
    final = train(cfg).metrics
    for k in (1, 2, 5, 10, 100, 1000):
        assert 0.0 <= final[f"eval/ARC/pass@{k}"] <= 1.0
    submission = json.loads((tmp_path / "run" / "eval_step_2" / "submission.json").read_text())
    tasks = json.loads((tmp_path / "arc_evaluation_challenges.json").read_text())
    assert set(submission) == set(tasks)
    assert all(set(att) == {"attempt_1", "attempt_2"} for task in submission.values() for att in task)


@pytest.mark.parametrize(
    "mode, params_finite, weights_overflow, message",
    [
        ("skip", False, False, "the weights became non-finite before step 7 (nonfinite_loss=skip cannot recover"),
        ("stop", False, False, "the weights became non-finite before step 7"),
        ("stop", True, True, "the update of step 7 would make the weights non-finite (lr=0.1), so it was not applied"),
    ],
)
def test_non_finite_weights_stop_even_under_skip(tmp_path, data, mode, params_finite, weights_overflow, message):
    cfg = _cfg(tmp_path, data, f"nonfinite_loss={mode}", "lr=0.1")
    metrics = {"params_finite": params_finite, "loss_finite": True, "weights_overflow": weights_overflow}
    with pytest.raises(NonFiniteError) as e:
        TrainWindow(cfg, logger=None).add(7, metrics, {}, log_now=False)
    assert message in str(e.value)


def test_float16_attention_on_cpu_is_refused_before_anything_is_made(tmp_path, data):
    result = train(_cfg(tmp_path / "run", data, "arch.forward_dtype=float16", "arch.mlp_t=false"))
    assert result.status == "failed" and result.exit_code == 1
    assert "float16 attention does not run on CPU" in result.error and "use bfloat16 or float32" in result.error
    assert not (tmp_path / "run").exists()
