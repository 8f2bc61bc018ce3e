"""experiments/run_batch.py: selection, deduplicated trainings and aliases, skipping finished
runs (checked against their config), failures, resuming, logs.

Most tests swap the trainer for a tiny fake that writes config.yaml first and summary.json last,
as pretrain_jax.py does, so the batch logic runs in seconds; one slow test trains for real.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from experiments import run_batch
from experiments.run_experiment import ROOT
from experiments.table import EXPERIMENTS, STUDY

FAKE_TRAINER = r"""
import json, os, pathlib, sys
run_dir, name, config = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
with open(os.environ["FAKE_CALLS"], "a") as f:
    f.write(name + "\n")
print(f"training {name}")
run_dir.mkdir(parents=True, exist_ok=True)
(run_dir / "config.yaml").write_text(config)
if name in os.environ.get("FAKE_FAIL", "").split(","):
    sys.exit(7)
if name in os.environ.get("FAKE_NO_SUMMARY", "").split(","):
    sys.exit(0)
(run_dir / "metrics.jsonl").write_text(json.dumps({"step": 4, "eval/all/exact_accuracy": 0.5}) + "\n")
(run_dir / "summary.json").write_text(json.dumps(
    {"status": "completed", "step": 4, "final_metrics": {"eval/all/exact_accuracy": 0.5}}))
"""


@pytest.fixture
def batch(tmp_path, monkeypatch):
    calls = tmp_path / "calls.txt"
    calls.touch()
    monkeypatch.setenv("FAKE_CALLS", str(calls))
    # The same override text in every test, so that run_experiment caches each composition once.
    monkeypatch.setenv("TEST_RUNS", str(tmp_path / "runs"))

    def fake_command(p):
        return [sys.executable, "-c", FAKE_TRAINER, str(p.run_dir), p.name, yaml.safe_dump(p.cfg.model_dump())]

    monkeypatch.setattr(run_batch, "command", fake_command)
    logs = tmp_path / "logs"

    def run(*args: str, overrides: tuple[str, ...] = ()) -> int:
        own = [*args, "--log-dir", str(logs)]
        return run_batch.main([*own, "--", "run_dir=${oc.env:TEST_RUNS}/${experiment_name}", *overrides])

    run.calls = lambda: calls.read_text().split()
    run.logs = logs
    run.summary = lambda: json.loads((logs / "batch_summary.json").read_text())["runs"]
    run.runs = tmp_path / "runs"
    return run


def test_runs_in_order_with_logs_and_summary(batch):
    assert batch("exp09e", "exp07c", "exp10c") == 0
    assert batch.calls() == ["exp09e", "exp07c", "exp10c"]
    for name in batch.calls():
        assert f"training {name}" in (batch.logs / f"{name}.log").read_text()
    s = batch.summary()
    assert {r["status"] for r in s.values()} == {"completed"}
    assert s["exp07c"]["group"] == "exp07" and s["exp07c"]["final_metrics"] == {"eval/all/exact_accuracy": 0.5}
    assert s["exp07c"]["wall_time_s"] >= 0 and s["exp07c"]["run_dir"] == str(batch.runs / "exp07c")
    totals = json.loads((batch.logs / "batch_summary.json").read_text())["totals"]
    assert totals["runs"] == {"completed": 3} and totals["wall_time_s"] == pytest.approx(
        sum(r["wall_time_s"] for r in s.values())
    )


def test_rerun_skips_completed_runs(batch):
    assert batch("exp09e") == 0
    assert batch("exp09e", "exp10c") == 0
    assert batch.calls() == ["exp09e", "exp10c"]
    assert batch.summary()["exp09e"]["status"] == "skipped"


def test_identical_runs_train_once_and_all_report(batch):
    assert batch("exp01c", "exp07b", "exp10b") == 0
    assert batch.calls() == ["baseline"]  # the first of them in the table trains, under its own name
    s = batch.summary()
    assert s["baseline"]["status"] == "completed"
    for name in ("exp01c", "exp07b", "exp10b"):
        assert (s[name]["status"], s[name]["alias_of"]) == ("alias", "baseline")
        summary = json.loads((batch.runs / name / "summary.json").read_text())
        assert (summary["status"], summary["alias_of"]) == ("alias", "baseline")
        assert summary["metrics_file"] == str(batch.runs / "baseline" / "metrics.jsonl")
        assert summary["final_metrics"] == {"eval/all/exact_accuracy": 0.5} and "not trained" in summary["note"]
        assert yaml.safe_load((batch.runs / name / "config.yaml").read_text())["experiment_name"] == name
    assert batch("exp01c", "exp10b") == 0  # nothing left to train
    assert batch.calls() == ["baseline"]


def test_an_alias_trained_on_its_own_earlier_counts_as_done(batch):
    assert batch("baseline") == 0
    own = batch.runs / "exp07b"
    own.mkdir()
    summary = (batch.runs / "baseline" / "summary.json").read_text()
    (own / "summary.json").write_text(summary)
    (own / "config.yaml").write_text((batch.runs / "baseline" / "config.yaml").read_text())
    _edit(own / "config.yaml", experiment_name="exp07b", experiment_group="exp07")
    assert batch("exp07b") == 0
    assert batch.calls() == ["baseline"] and batch.summary()["exp07b"]["status"] == "skipped"
    assert (own / "summary.json").read_text() == summary


def test_replicate_duplicates_trains_them_with_their_own_seed(batch):
    assert batch("exp01c", "exp07b", "--replicate-duplicates") == 0
    assert batch.calls() == ["exp01c", "exp07b"]
    seeds = [yaml.safe_load((batch.runs / n / "config.yaml").read_text())["seed"] for n in ("exp01c", "exp07b")]
    # Replica k of a training gets seed + k, k counting its copies in table order: the baseline
    # keeps seed 0; exp01c, exp02a_03, exp02b_03, exp03b, exp04a_1000, exp04b_1000, exp05_d,
    # exp06_c, exp07b are copies 1 to 9.
    assert seeds == [1, 9]


def test_stops_at_first_failure_and_resumes(batch, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL", "exp10c")
    assert batch("--pattern", "exp10*") == 1
    assert batch.calls() == ["exp10a", "baseline", "exp10c"]  # exp10b is the baseline's training
    assert batch.summary()["exp10c"]["status"] == "failed"
    assert "training exp10c" in (batch.logs / "exp10c.log").read_text()

    monkeypatch.delenv("FAKE_FAIL")
    assert batch("--pattern", "exp10*") == 0
    assert batch.calls() == ["exp10a", "baseline", "exp10c", "exp10c", "exp10d", "exp10e"]
    assert (batch.logs / "exp10c.log").read_text().count("=====") == 2  # one header per attempt


def test_continue_on_failure(batch, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL", "exp05_a")
    monkeypatch.setenv("FAKE_NO_SUMMARY", "exp05_b")
    assert batch("exp05_a", "exp05_b", "exp05_c", "--continue-on-failure") == 1
    assert batch.calls() == ["exp05_a", "exp05_b", "exp05_c"]
    s = batch.summary()
    assert (s["exp05_a"]["status"], s["exp05_a"]["returncode"]) == ("failed", 7)
    assert s["exp05_b"]["status"] == "failed"  # exit 0 is not enough without summary.json
    assert s["exp05_c"]["status"] == "completed"


def test_a_failed_training_fails_its_aliases(batch, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL", "baseline")
    assert batch("exp01c", "exp07b", "--continue-on-failure") == 1
    assert batch.calls() == ["baseline"]  # tried once, not once per alias
    s = batch.summary()
    assert s["baseline"]["status"] == "failed" and s["exp01c"]["status"] == s["exp07b"]["status"] == "failed"
    assert not (batch.runs / "exp01c" / "summary.json").exists()


def _edit(path, **changes) -> None:
    """Rewrite a run's YAML or JSON file with some values changed (dotted keys)."""
    load, dump = (yaml.safe_load, yaml.safe_dump) if path.suffix == ".yaml" else (json.loads, json.dumps)
    data = load(path.read_text())
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            node = node[key]
        node[leaf] = value
    path.write_text(dump(data))


@pytest.mark.parametrize(
    ("file", "changes", "why"),
    [
        ("summary.json", {"smoke": True}, "is from a smoke run"),
        ("config.yaml", {"smoke.enabled": True}, "is from a smoke run"),
        ("config.yaml", {"lr": 3e-4}, "was written for another config"),
        ("summary.json", {"config_hash": "0123456789abcdef"}, "was written for another config"),
    ],
)
def test_a_summary_written_for_another_config_does_not_count(batch, capsys, file, changes, why):
    assert batch("exp09e") == 0
    _edit(batch.runs / "exp09e" / file, **changes)
    capsys.readouterr()
    assert batch("exp09e") == 0
    assert batch.calls() == ["exp09e", "exp09e"]
    assert why in capsys.readouterr().err
    assert batch("exp09e") == 0  # the new summary counts
    assert batch.calls() == ["exp09e", "exp09e"]


def test_alias_never_overwrites_a_real_summary(batch, capsys):
    assert batch("exp09e") == 0
    foreign = batch.runs / "exp07b"
    foreign.mkdir(parents=True)
    summary = json.dumps({"status": "completed", "step": 1, "final_metrics": {}})
    (foreign / "summary.json").write_text(summary)
    (foreign / "config.yaml").write_text((batch.runs / "exp09e" / "config.yaml").read_text())
    assert batch("exp07b") == 1
    assert "move it away" in capsys.readouterr().err
    assert (foreign / "summary.json").read_text() == summary


def test_invalid_override_fails_without_training(batch):
    assert batch("exp01a", overrides=("arch.hidden_size=-3",)) == 1
    assert batch.calls() == []
    assert batch.summary()["exp01a"]["status"] == "invalid"


def test_list_marks_the_shared_training_and_dry_run_touches_nothing(batch, capsys):
    assert batch("exp09e") == 0
    capsys.readouterr()
    assert batch("--list") == 0
    listing = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert list(listing) == [e.name for e in EXPERIMENTS]
    assert "trained for" in listing["baseline"] and "pending" in listing["baseline"]
    assert "alias of baseline" in listing["exp01c"] and "completed" in listing["exp09e"]
    assert listing["paper_arc1"].split()[1] == "paper"

    assert batch("--dry-run") == 0
    out = capsys.readouterr().out
    assert batch.calls() == ["exp09e"]
    heads = {line.split(": ", 1)[0].split("] ", 1)[1] for line in out.splitlines() if line.startswith("[")}
    assert {e.name for e in STUDY} <= heads and not any(h.startswith("paper") for h in heads)
    assert "exp09e: already completed" in out and "exp01a: would train" in out and " steps; FLOPs " in out
    assert "exp01c: alias of baseline" in out
    assert not (batch.runs / "exp01c").exists()


def test_unknown_name_and_empty_pattern_are_rejected(batch):
    with pytest.raises(SystemExit, match="no_such"):
        batch("no_such")
    with pytest.raises(SystemExit, match="matches no experiment") as exc:
        batch("--pattern", "exp99*")
    assert exc.value.code not in (0, None)


@pytest.mark.slow
def test_smoke_batch_of_identical_runs_trains_once_and_resumes(tmp_path):
    cmd = [
        sys.executable,
        "experiments/run_batch.py",
        "exp07b",
        "exp10b",
        "--log-dir",
        str(tmp_path / "logs"),
        "--",
        "smoke.enabled=true",
        f"run_dir={tmp_path}/${{experiment_name}}",
    ]
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    assert sorted(p.name for p in (tmp_path / "logs").glob("*.log")) == ["baseline.log"]
    assert json.loads((tmp_path / "baseline" / "summary.json").read_text())["status"] == "completed"
    for name in ("exp07b", "exp10b"):
        alias = json.loads((tmp_path / name / "summary.json").read_text())
        assert (alias["alias_of"], alias["smoke"]) == ("baseline", True) and alias["final_metrics"]
    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0 and "already completed" in second.stdout

    analysis = subprocess.run(
        [sys.executable, "experiments/analyze.py", "--runs-dir", str(tmp_path), "--out-dir", str(tmp_path / "report")]
        + ["--include-smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert analysis.returncode == 0, analysis.stderr
    results = pd.read_csv(tmp_path / "report" / "results.csv").set_index("name")
    rows = results.loc[["baseline", "exp07b", "exp10b"]]
    assert list(rows["status"]) == ["completed", "alias", "alias"] and rows["smoke"].all()
    assert list(rows["alias_of"].fillna("")) == ["", "baseline", "baseline"]
    assert rows["exact_accuracy"].nunique() == 1 and rows.loc["baseline", "replicates"] == 1
