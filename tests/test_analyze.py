"""experiments/analyze.py on a synthetic runs/ tree whose accuracies follow a known law."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml

from experiments import analyze
from experiments.generate_configs import nest
from experiments.table import BY_NAME, resolved

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
) -> Path:
    exp = BY_NAME[name]
    run_dir = root / exp.group / name
    run_dir.mkdir(parents=True)
    config = nest(resolved(exp))
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
    import pandas as pd

    df = pd.read_csv(out / "runs.csv").set_index("name")
    assert len(df) == 6 + 6 + 3 + 2
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
    assert list(df["name"]) == ["exp09c"]
    r = df.iloc[0]
    assert (r["status"], r["exact_accuracy"], r["params"]) == ("completed", 0.42, 5)
    assert r["optimizer_label"] == "adamw (0.9, 0.99)"
