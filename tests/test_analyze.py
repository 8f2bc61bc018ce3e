"""experiments/analyze.py on a synthetic runs/ tree whose accuracies follow a known law."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from experiments import analyze
from experiments.generate_configs import nest
from experiments.table import BY_NAME, STUDY, resolved

# The law the synthetic runs follow; the fits must find it again.
A, C = 0.9, 0.45


def law(x: float, x_min: float, acc_at_min: float = 0.2) -> tuple[float, float]:
    """(accuracy, b) of A - b x^-C, with b chosen so that the smallest x scores acc_at_min."""
    b = (A - acc_at_min) * x_min**C
    return A - b * x**-C, b


def write_run(
    root: Path,
    name: str,
    exact: float,
    *,
    params: int = 1_000_000,
    finished: bool = True,
    halt_hist: list[int] | None = None,
    changes: dict | None = None,
) -> Path:
    exp = BY_NAME[name]
    run_dir = root / exp.group / name
    run_dir.mkdir(parents=True)
    config = nest({**resolved(exp), **(changes or {})})
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    halt = halt_hist or [0] * (config["arch"]["halt_max_steps"] - 1) + [10]
    lines = []
    for step in (10, 20, 30):
        lines.append(
            {
                "step": step,
                "epoch": step / 10,
                "train/lm_loss": 1.0 / step,
                "train/accuracy": 0.5,
                "train/exact_accuracy": exact * step / 30,
                "train/examples_per_sec": 100.0 + step,
                "train/halt_step_hist": halt,
            }
        )
    evals = [
        {"step": 15, "eval/all/exact_accuracy": exact / 2, "eval/all/accuracy": 0.6},
        {"step": 30, "eval/all/exact_accuracy": exact, "eval/all/accuracy": 0.7, "eval/all/halt_step_hist": halt},
    ]
    lines[1:1] = evals[:1]
    lines.append(evals[1])
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + '\n{"step": 3')
    if finished:
        summary = {
            "status": "completed",
            "step": 30,
            "total_steps": 30,
            "num_params": params,
            "final_metrics": evals[1],
            "wall_time_s": 12.0,
            "peak_memory_bytes": None,
        }
        (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def report_fit(report: str, group: str) -> dict[str, float]:
    section = report.split(f"## {group}\n", 1)[1].split("\n## ", 1)[0]
    m = re.search(r"a = ([-\d.e+]+), b = ([-\d.e+]+), c = ([-\d.e+]+)", section)
    assert m, section
    return dict(zip("abc", map(float, m.groups()), strict=False))


def test_fit_recovers_the_law():
    x = np.geomspace(1e6, 5e7, 6)
    y, b = law(x, x.min())
    fit = analyze.fit_scaling_law(x, y)
    assert isinstance(fit, analyze.Fit)
    assert fit.a == pytest.approx(A, rel=1e-4)
    assert fit.b == pytest.approx(b, rel=1e-3)
    assert fit.c == pytest.approx(C, rel=1e-3)
    assert fit.rmse < 1e-6


def test_fit_needs_four_points():
    x = np.array([1.0, 2.0, 4.0])
    message = analyze.fit_scaling_law(x, law(x, 1.0)[0])
    assert isinstance(message, str) and "not enough points" in message


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    out = tmp_path_factory.mktemp("reports")
    params = [int(p) for p in np.geomspace(1.5e6, 6e7, 6)]
    for name, p in zip(["exp01a", "exp01b", "exp01c", "exp01d", "exp01e", "exp01f"], params, strict=False):
        write_run(root, name, law(p, params[0])[0], params=p)
    puzzles = [100, 250, 500, 1000, 2000, 5000]
    for n in puzzles:
        write_run(root, f"exp04a_{n}", law(n, puzzles[0])[0])
    for name in ("exp02b_01", "exp02b_02", "exp02b_03"):  # three runs: too few to fit
        write_run(root, name, 0.5)
    write_run(root, "exp07a", 0.8, halt_hist=[1, 2, 3, 4])
    write_run(root, "exp07c", 0.3, finished=False)
    assert analyze.main(["--runs-dir", str(root), "--out-dir", str(out)]) == 0
    return out, params, puzzles


def test_report_recovers_fits(study):
    out, params, puzzles = study
    report = (out / "report.md").read_text()
    for group, xs in (("exp01", params), ("exp04a", puzzles)):
        fit = report_fit(report, group)
        assert fit["a"] == pytest.approx(A, rel=1e-3)
        assert fit["c"] == pytest.approx(C, rel=1e-2)
        assert fit["b"] == pytest.approx(law(1.0, xs[0])[1], rel=2e-2)
    exp02b = report.split("## exp02b\n", 1)[1].split("\n## ", 1)[0]
    assert "not enough points" in exp02b


def test_report_embeds_every_plot(study):
    out, _, _ = study
    report = (out / "report.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    for group in ("exp01", "exp04a", "exp02b", "exp07"):
        for kind in ("accuracy", "curves", "throughput", "halting"):
            assert f"{group}_{kind}.png" in images
    for image in images:
        assert (out / image).stat().st_size > 1000


def test_table_reads_configs_and_unfinished_runs(study):
    out, params, _ = study
    df = pd.read_csv(out / "results.csv").set_index("name")
    assert list(df.index) == [e.name for e in STUDY]  # one row per experiment, in table order
    assert (df["status"] == "pending").sum() == len(STUDY) - (6 + 6 + 3 + 2)
    assert df.loc["exp05_a", "status"] == "pending" and np.isnan(df.loc["exp05_a", "exact_accuracy"])
    assert df.loc["exp01a", "params"] == params[0]
    assert df.loc["exp04a_250", "train_puzzles"] == 250
    assert df.loc["exp04a_1000", "train_puzzles"] == 1000  # the baseline's "1k" dataset name
    assert df.loc["exp02b_02", "effective_depth"] == 2 * (6 + 1) * 2
    unfinished = df.loc["exp07c"]
    assert unfinished["status"] == "running"
    assert unfinished["exact_accuracy"] == pytest.approx(0.3)  # its latest evaluation
    assert unfinished["examples_per_sec"] == pytest.approx(120.0)  # median of the train lines


def test_wandb_runs_become_rows(monkeypatch):
    class FakeRun:
        id = "abc123"
        state = "finished"
        config = nest(resolved(BY_NAME["exp09c"]))
        summary = {"eval/all/exact_accuracy": 0.42, "num_params": 5, "train/lm_loss": 1.0}

        def scan_history(self):
            return [{"step": 1, "train/lm_loss": 2.0, "train/examples_per_sec": 7.0}]

    class FakeApi:
        def runs(self, project):
            if project != "me/trm-exp09":
                raise ValueError(f"project {project} not found")
            return [FakeRun()]

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(Api=FakeApi))
    runs = analyze.load_wandb("me")
    df = analyze.collect(runs)
    assert list(df.loc[df["status"] != "pending", "name"]) == ["exp09c"]
    r = df.set_index("name").loc["exp09c"]
    assert (r["status"], r["exact_accuracy"], r["params"]) == ("completed", 0.42, 5)
    assert r["optimizer_label"] == "adamw (0.9, 0.99)"


def _results(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "results.csv").set_index("name")


def test_alias_gets_a_row_with_the_trained_runs_metrics(tmp_path):
    from experiments.run_batch import write_alias
    from experiments.run_experiment import plan

    runs = tmp_path / "runs"
    trained = write_run(runs, "baseline", 0.7)
    canonical, alias = (
        plan(n, [f"run_dir={runs}/${{experiment_group}}/${{experiment_name}}"]) for n in ("baseline", "exp07b")
    )
    assert canonical.run_dir == trained
    write_alias(alias, canonical, json.loads((trained / "summary.json").read_text()))
    assert analyze.main(["--runs-dir", str(runs), "--out-dir", str(tmp_path / "out")]) == 0
    df = _results(tmp_path / "out")
    assert (df.loc["exp07b", "status"], df.loc["exp07b", "alias_of"]) == ("alias", "baseline")
    assert df.loc["exp07b", "exact_accuracy"] == df.loc["baseline", "exact_accuracy"] == pytest.approx(0.7)
    assert np.isnan(df.loc["exp07b", "wall_time_s"])  # its time was spent once, by baseline
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| exp07b | alias | baseline |" in report.split("## exp07\n", 1)[1]


def test_damaged_runs_are_skipped_with_a_warning_naming_the_file(tmp_path, capsys):
    runs = tmp_path / "runs"
    write_run(runs, "exp09b", 0.4)
    bad_yaml = write_run(runs, "exp09c", 0.5)
    (bad_yaml / "config.yaml").write_text("arch: [unclosed\n")
    bad_summary = write_run(runs, "exp09d", 0.5)
    (bad_summary / "summary.json").write_text('{"status": "compl')
    bad_value = write_run(runs, "exp09e", 0.5, changes={"lr": "fast"})
    assert analyze.main(["--runs-dir", str(runs), "--out-dir", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    for damaged in (bad_yaml, bad_summary, bad_value):
        assert f"skipped the damaged run {damaged}" in err
    df = _results(tmp_path / "out")
    assert df.loc["exp09b", "exact_accuracy"] == pytest.approx(0.4)
    assert (df.loc[["exp09c", "exp09d", "exp09e"], "status"] == "pending").all()


def test_smoke_runs_are_left_out_unless_asked(tmp_path, capsys):
    runs = tmp_path / "runs"
    write_run(runs, "exp10a", 0.3, changes={"smoke.enabled": True})
    assert analyze.main(["--runs-dir", str(runs), "--out-dir", str(tmp_path / "out")]) == 1  # nothing else
    assert "left out 1 smoke runs" in capsys.readouterr().err
    assert analyze.main(["--runs-dir", str(runs), "--out-dir", str(tmp_path / "out"), "--include-smoke"]) == 0
    row = _results(tmp_path / "out").loc["exp10a"]
    assert (row["status"], row["smoke"]) == ("completed", True)


def test_replicates_are_summarised_as_mean_and_spread(tmp_path):
    runs = tmp_path / "runs"
    accuracies = {"baseline": 0.60, "exp01c": 0.64, "exp02a_03": 0.62}
    for seed, (name, acc) in enumerate(accuracies.items()):
        write_run(runs, name, acc, changes={"seed": seed})
    write_run(runs, "exp02a_01", 0.9, changes={"seed": 3})  # other settings: not a replica
    assert analyze.main(["--runs-dir", str(runs), "--out-dir", str(tmp_path / "out")]) == 0
    df = _results(tmp_path / "out")
    values = list(accuracies.values())
    for name in accuracies:
        assert df.loc[name, "replicates"] == 3
        assert df.loc[name, "exact_accuracy_mean"] == pytest.approx(np.mean(values))
        assert df.loc[name, "exact_accuracy_std"] == pytest.approx(np.std(values, ddof=1))
    assert df.loc["exp02a_01", "replicates"] == 1
    section = (tmp_path / "out" / "report.md").read_text().split("## Replicates\n", 1)[1].split("\n## ", 1)[0]
    assert f"{np.mean(values):.4g} ± {np.std(values, ddof=1):.2g}" in section and "exp02a_01" not in section


def test_subset_evaluations_never_stand_for_full_ones(tmp_path):
    runs = tmp_path / "runs"
    run_dir = write_run(runs, "exp05_b", 0.5, finished=False)
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()[:-1]]
    subset_only = [
        {k.replace("eval/", "eval_subset/"): v for k, v in line.items()} if "eval/all/exact_accuracy" in line else line
        for line in lines
    ]
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in subset_only))
    assert analyze.main(["--runs-dir", str(runs), "--out-dir", str(tmp_path / "out")]) == 0
    assert np.isnan(_results(tmp_path / "out").loc["exp05_b", "exact_accuracy"])
