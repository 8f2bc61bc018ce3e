"""experiments/run_batch.py: selection, skipping finished runs, failures, resuming, logs.

Most tests swap the trainer for a tiny fake that writes summary.json the way pretrain_jax.py
does (last, on success), so the batch logic runs in seconds; one slow test trains for real.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from experiments import run_batch
from experiments.run_experiment import ROOT

FAKE_TRAINER = r"""
import json, os, pathlib, sys
run_dir, name = pathlib.Path(sys.argv[1]), sys.argv[2]
with open(os.environ["FAKE_CALLS"], "a") as f:
    f.write(name + "\n")
print(f"training {name}")
if name in os.environ.get("FAKE_FAIL", "").split(","):
    sys.exit(7)
if name in os.environ.get("FAKE_NO_SUMMARY", "").split(","):
    sys.exit(0)
run_dir.mkdir(parents=True, exist_ok=True)
(run_dir / "summary.json").write_text(json.dumps(
    {"status": "completed", "step": 4, "final_metrics": {"eval/all/exact_accuracy": 0.5}}))
"""


@pytest.fixture
def batch(tmp_path, monkeypatch):
    calls = tmp_path / "calls.txt"
    calls.touch()
    monkeypatch.setenv("FAKE_CALLS", str(calls))
    monkeypatch.setattr(run_batch, "command", lambda p: [sys.executable, "-c", FAKE_TRAINER, str(p.run_dir), p.name])
    logs = tmp_path / "logs"

    def run(*args: str) -> int:
        own = list(args)
        return run_batch.main([*own, "--log-dir", str(logs), "--", f"run_dir={tmp_path}/runs/${{experiment_name}}"])

    run.calls = lambda: calls.read_text().split()
    run.logs = logs
    run.summary = lambda: json.loads((logs / "batch_summary.json").read_text())
    run.runs = tmp_path / "runs"
    return run


def test_runs_in_order_with_logs_and_summary(batch):
    assert batch("exp08a", "exp07c", "exp08b") == 0
    assert batch.calls() == ["exp08a", "exp07c", "exp08b"]
    for name in batch.calls():
        assert f"training {name}" in (batch.logs / f"{name}.log").read_text()
    s = batch.summary()
    assert {r["status"] for r in s.values()} == {"completed"}
    assert s["exp07c"]["group"] == "exp07" and s["exp07c"]["final_metrics"] == {"eval/all/exact_accuracy": 0.5}
    assert s["exp07c"]["wall_time_s"] >= 0 and s["exp07c"]["run_dir"] == str(batch.runs / "exp07c")


def test_rerun_skips_completed_runs(batch):
    assert batch("exp08a") == 0
    assert batch("exp08a", "exp08b") == 0
    assert batch.calls() == ["exp08a", "exp08b"]
    assert batch.summary()["exp08a"]["status"] == "skipped"


def test_stops_at_first_failure_and_resumes(batch, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL", "exp10b")
    assert batch("--pattern", "exp10*") == 1
    assert batch.calls() == ["exp10a", "exp10b"]
    assert batch.summary()["exp10b"]["status"] == "failed"
    assert "training exp10b" in (batch.logs / "exp10b.log").read_text()

    monkeypatch.delenv("FAKE_FAIL")
    assert batch("--pattern", "exp10*") == 0
    assert batch.calls() == ["exp10a", "exp10b", "exp10b", "exp10c", "exp10d", "exp10e"]
    assert (batch.logs / "exp10b.log").read_text().count("=====") == 2  # one header per attempt


def test_continue_on_failure(batch, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL", "exp05_a")
    monkeypatch.setenv("FAKE_NO_SUMMARY", "exp05_b")
    assert batch("exp05_a", "exp05_b", "exp05_c", "--continue-on-failure") == 1
    assert batch.calls() == ["exp05_a", "exp05_b", "exp05_c"]
    s = batch.summary()
    assert (s["exp05_a"]["status"], s["exp05_a"]["returncode"]) == ("failed", 7)
    assert s["exp05_b"]["status"] == "failed"  # exit 0 is not enough without summary.json
    assert s["exp05_c"]["status"] == "completed"


def test_invalid_override_fails_without_training(batch):
    assert run_batch.main(["exp01a", "--log-dir", str(batch.logs), "--", "arch.hidden_size=-3"]) == 1
    assert batch.calls() == []
    assert batch.summary()["exp01a"]["status"] == "invalid"


def test_list_and_dry_run_touch_nothing(batch, capsys):
    assert batch("exp08a") == 0
    capsys.readouterr()
    assert batch("--list", "--pattern", "exp08*") == 0
    listing = capsys.readouterr().out.splitlines()
    assert len(listing) == 5
    assert "completed" in listing[0] and "pending" in listing[1]
    assert batch("--dry-run") == 0
    out = capsys.readouterr().out
    assert batch.calls() == ["exp08a"]
    heads = [line.split(": ", 1)[0] for line in out.splitlines() if line.startswith("[")]
    assert len(heads) == 67 and not any(h.endswith(" baseline") for h in heads)  # baseline only on request
    assert "exp08a: already completed" in out and "exp08b: would run" in out


def test_unknown_name_is_rejected(batch):
    with pytest.raises(SystemExit, match="no_such"):
        batch("no_such")


@pytest.mark.slow
def test_real_training_then_resume(tmp_path):
    cmd = [
        sys.executable,
        "experiments/run_batch.py",
        "exp09e",
        "--log-dir",
        str(tmp_path / "logs"),
        "--",
        "smoke.enabled=true",
        f"run_dir={tmp_path}/${{experiment_name}}",
    ]
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr + (tmp_path / "logs" / "exp09e.log").read_text()
    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0 and "already completed" in second.stdout
    s = json.loads((tmp_path / "logs" / "batch_summary.json").read_text())["exp09e"]
    assert s["status"] == "skipped" and s["final_metrics"]
