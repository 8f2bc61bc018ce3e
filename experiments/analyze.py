"""Collect the scaling study's runs into one table, plot each group, fit scaling laws, and
write a Markdown report.

    python experiments/analyze.py --runs-dir runs --out-dir reports
    python experiments/analyze.py --out-dir reports --wandb --wandb-entity ENTITY

A run is a directory holding config.yaml (resolved config), metrics.jsonl (train and eval
lines) and, once finished, summary.json. Unfinished runs are included with their latest
evaluation. Writes <out-dir>/runs.csv, <out-dir>/<group>_*.png and <out-dir>/report.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # files only: no display on training hosts or in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from scipy.optimize import curve_fit  # noqa: E402

from experiments.table import GROUPS, parse_dataset_path  # noqa: E402

MIN_FIT_POINTS = 4
SUDOKU_DIMS = {"vocab_size": 11, "seq_len": 81, "num_puzzle_identifiers": 1}


@dataclass
class Run:
    config: dict[str, Any]
    history: list[dict[str, Any]]
    summary: dict[str, Any] | None


@dataclass(frozen=True)
class Axis:
    column: str
    label: str
    log: bool = False
    categorical: bool = False
    fit: bool = False


_DEPTH = Axis("effective_depth", "effective depth H_cycles x (L_cycles + 1) x L_layers", fit=True)
AXES: dict[str, Axis] = {
    "exp01": Axis("params", "parameters", log=True, fit=True),
    "exp02a": _DEPTH,
    "exp02b": _DEPTH,
    "exp03": _DEPTH,
    "exp04a": Axis("train_puzzles", "training puzzles", log=True, fit=True),
    "exp04b": Axis("augmentations", "augmentations per puzzle", log=True),
    "exp05": Axis("halt_max_steps", "halt_max_steps"),
    "exp06": Axis("global_batch_size", "global batch size (lr ~ sqrt(batch))", log=True),
    "exp07": Axis("forward_dtype", "forward dtype", categorical=True),
    "exp08": Axis("ema_label", "EMA rate", categorical=True),
    "exp09": Axis("optimizer_label", "optimizer (beta1, beta2)", categorical=True),
    "exp10": Axis("lr_label", "lr, lr_min_ratio", categorical=True),
}
BY_NAME_AXIS = Axis("name", "experiment", categorical=True)


# ---------------------------------------------------------------- loading


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = []
    for line in path.read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a crash or preemption
    return lines


def load_local(runs_dir: Path) -> list[Run]:
    runs = []
    for cfg_file in sorted(runs_dir.rglob("config.yaml")):
        d = cfg_file.parent
        summary = json.loads((d / "summary.json").read_text()) if (d / "summary.json").exists() else None
        runs.append(Run(yaml.safe_load(cfg_file.read_text()), _read_jsonl(d / "metrics.jsonl"), summary))
    return runs


def load_wandb(entity: str | None) -> list[Run]:
    """Runs from the study's W&B projects (trm-<group>); needs network access and a login."""
    try:
        import wandb
    except ImportError:
        raise SystemExit("--wandb needs the wandb package (pip install wandb)") from None
    api = wandb.Api()
    runs = []
    for group in GROUPS:
        project = f"{entity}/trm-{group}" if entity else f"trm-{group}"
        try:
            remote = list(api.runs(project))
        except Exception as err:  # missing project, no network, no login: report and go on
            print(f"W&B {project}: skipped ({err})", file=sys.stderr)
            continue
        for r in remote:
            history = [dict(row) for row in r.scan_history()]
            final = {k: v for k, v in dict(r.summary).items() if k.startswith("eval/")}
            summary = {
                "status": "completed" if r.state == "finished" else r.state,
                "final_metrics": final,
                "num_params": dict(r.summary).get("num_params"),
            }
            runs.append(Run(dict(r.config), history, summary))
    return runs


# ---------------------------------------------------------------- the table


def eval_metric(metrics: dict[str, Any], name: str) -> Any:
    """eval/<set>/<name>, preferring the set "all"."""
    if f"eval/all/{name}" in metrics:
        return metrics[f"eval/all/{name}"]
    for key, value in metrics.items():
        if key.startswith("eval/") and key.endswith(f"/{name}") and key.count("/") == 2:
            return value
    return None


def _num_params(run: Run) -> float:
    n = (run.summary or {}).get("num_params")
    if isinstance(n, dict):
        return float(sum(n.values()))
    if n is not None:
        return float(n)
    try:  # runs that have not finished yet: count analytically
        from models.config import ArchConfig
        from models.trm import num_parameters

        return float(sum(num_parameters(ArchConfig.model_validate(run.config["arch"]), **SUDOKU_DIMS).values()))
    except (ImportError, KeyError, ValueError):
        return math.nan


def row(run: Run) -> dict[str, Any]:
    c, arch = run.config, run.config.get("arch", {})
    evals = [h for h in run.history if any(k.startswith("eval/") for k in h)]
    trains = [h for h in run.history if "train/lm_loss" in h]
    final = (run.summary or {}).get("final_metrics") or (evals[-1] if evals else {})
    data = parse_dataset_path((c.get("data_paths") or [""])[0]) or (math.nan, math.nan)
    speeds = [h["train/examples_per_sec"] for h in trains if h.get("train/examples_per_sec") is not None]
    return {
        "name": c.get("experiment_name"),
        "group": c.get("experiment_group"),
        "status": (run.summary or {}).get("status", "running"),
        "exact_accuracy": eval_metric(final, "exact_accuracy"),
        "accuracy": eval_metric(final, "accuracy"),
        "params": _num_params(run),
        "effective_depth": arch.get("H_cycles", 0) * (arch.get("L_cycles", 0) + 1) * arch.get("L_layers", 0),
        "train_puzzles": data[0],
        "augmentations": data[1],
        "halt_max_steps": arch.get("halt_max_steps"),
        "global_batch_size": c.get("global_batch_size"),
        "forward_dtype": arch.get("forward_dtype"),
        "ema_label": f"{c.get('ema_rate')}" if c.get("ema") else "off",
        "optimizer_label": f"{c.get('optimizer')} ({c.get('beta1')}, {c.get('beta2')})",
        "lr_label": f"{c.get('lr'):g}, {c.get('lr_min_ratio'):g}" if c.get("lr") is not None else None,
        "step": (run.summary or {}).get("step", trains[-1]["step"] if trains else None),
        "wall_time_s": (run.summary or {}).get("wall_time_s"),
        "peak_memory_bytes": (run.summary or {}).get("peak_memory_bytes"),
        # The median ignores the first, compile-bound, logging window.
        "examples_per_sec": float(np.median(speeds)) if speeds else math.nan,
    }


def collect(runs: list[Run]) -> pd.DataFrame:
    df = pd.DataFrame([row(r) for r in runs])
    return df.sort_values(["group", "name"], ignore_index=True) if len(df) else df


# ---------------------------------------------------------------- scaling law


@dataclass(frozen=True)
class Fit:
    a: float
    b: float
    c: float
    n: int
    rmse: float

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.a - self.b * np.power(x, -self.c)


def fit_scaling_law(x, y) -> Fit | str:
    """accuracy = a - b * x^(-c); a message instead when it cannot be fitted."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0)
    x, y = x[ok], y[ok]
    if len(np.unique(x)) < MIN_FIT_POINTS:
        return f"not enough points ({len(np.unique(x))} distinct, need {MIN_FIT_POINTS})"
    # Fit in units of the smallest x: b then stays O(1) even when x is a parameter count.
    x0 = x.min()
    spread = max(float(np.ptp(y)), 1e-3)
    try:
        (a, b0, c), _ = curve_fit(
            lambda s, a, b, c: a - b * np.power(s, -c),
            x / x0,
            y,
            p0=[float(y.max()), spread, 0.5],
            bounds=([-np.inf, 0.0, 0.0], [np.inf, np.inf, 10.0]),
            maxfev=20000,
        )
    except (RuntimeError, ValueError) as err:
        return f"fit failed ({err})"
    fit = Fit(float(a), float(b0 * x0**c), float(c), len(x), 0.0)
    return Fit(fit.a, fit.b, fit.c, fit.n, float(np.sqrt(np.mean((fit(x) - y) ** 2))))


# ---------------------------------------------------------------- plots


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def plot_accuracy(df: pd.DataFrame, axis: Axis, fit: Fit | str | None, path: Path) -> str:
    fig, ax = plt.subplots(figsize=(6, 4))
    if axis.categorical:
        ax.bar(df[axis.column].astype(str), df["exact_accuracy"].astype(float))
        ax.tick_params(axis="x", rotation=30)
    else:
        d = df.sort_values(axis.column)
        ax.plot(d[axis.column], d["exact_accuracy"], "o-", label="runs")
        if isinstance(fit, Fit):
            xs = np.geomspace(d[axis.column].min(), d[axis.column].max(), 100)
            ax.plot(xs, fit(xs), "--", label=f"{fit.a:.3f} - {fit.b:.3g} x^-{fit.c:.3f}")
            ax.legend()
        if axis.log:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # labels would overlap
    ax.set_xlabel(axis.label)
    ax.set_ylabel("test exact accuracy")
    return _save(fig, path)


def plot_curves(group_runs: list[Run], path: Path) -> str:
    panels = [
        ("train/lm_loss", "train lm loss"),
        ("train/exact_accuracy", "train exact accuracy"),
        ("exact_accuracy", "test exact accuracy"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for run in group_runs:
        for ax, (key, _) in zip(axes, panels, strict=False):
            if key.startswith("train/"):
                pts = [(h["step"], h[key]) for h in run.history if h.get(key) is not None]
            else:
                pts = [(h["step"], eval_metric(h, key)) for h in run.history if eval_metric(h, key) is not None]
            if pts:
                ax.plot(
                    *zip(*pts, strict=False),
                    ".-" if key == "exact_accuracy" else "-",
                    label=run.config.get("experiment_name"),
                )
    for ax, (_, title) in zip(axes, panels, strict=False):
        ax.set_xlabel("step")
        ax.set_title(title)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def plot_throughput(df: pd.DataFrame, path: Path) -> str:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.bar(df["name"], df["examples_per_sec"].astype(float))
    ax1.set_title("training examples / s (median)")
    memory = pd.to_numeric(df["peak_memory_bytes"], errors="coerce") / 2**30
    if memory.notna().any():
        ax2.bar(df["name"], memory)
    else:
        ax2.text(0.5, 0.5, "not recorded (CPU runs)", ha="center", va="center", transform=ax2.transAxes)
    ax2.set_title("peak accelerator memory (GiB)")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=45)
    return _save(fig, path)


def halting_histogram(run: Run) -> list[float] | None:
    """From the latest evaluation; else summed over the training logs."""
    for h in reversed(run.history):
        hist = eval_metric(h, "halt_step_hist")
        if hist:
            return hist
    train = [h["train/halt_step_hist"] for h in run.history if h.get("train/halt_step_hist")]
    return list(np.sum(train, axis=0)) if train else None


def plot_halting(group_runs: list[Run], path: Path) -> str | None:
    hists = [(r.config.get("experiment_name"), halting_histogram(r)) for r in group_runs]
    hists = [(n, np.asarray(h, float)) for n, h in hists if h is not None and sum(h) > 0]
    if not hists:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, h in hists:
        ax.step(np.arange(1, len(h) + 1), h / h.sum(), where="mid", label=name)
    ax.set_xlabel("halting step")
    ax.set_ylabel("fraction of puzzles")
    ax.legend(fontsize=7)
    return _save(fig, path)


# ---------------------------------------------------------------- report


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _markdown_table(df: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in r) + " |" for r in df.astype(object).itertuples(index=False)]
    return "\n".join(lines)


def analyze(runs: list[Run], out_dir: Path) -> pd.DataFrame:
    out_dir.mkdir(parents=True, exist_ok=True)
    df = collect(runs)
    df.to_csv(out_dir / "runs.csv", index=False)
    report = ["# Scaling study report", "", f"{len(df)} runs; table: [runs.csv](runs.csv).", ""]
    groups = [g for g in GROUPS if len(df) and g in set(df["group"])]
    groups += sorted(set(df["group"]) - set(groups)) if len(df) else []
    for group in groups:
        gdf = df[df["group"] == group].reset_index(drop=True)
        group_runs = [r for r in runs if r.config.get("experiment_group") == group]
        axis = AXES.get(group, BY_NAME_AXIS)
        fit = fit_scaling_law(gdf[axis.column], gdf["exact_accuracy"]) if axis.fit else None
        columns = dict.fromkeys(
            ["name", "status", axis.column, "exact_accuracy", "accuracy", "params", "step", "wall_time_s"]
        )
        report += [f"## {group}", "", _markdown_table(gdf[list(columns)]), ""]
        if isinstance(fit, Fit):
            report += [
                f"Scaling law `accuracy = a - b * x^(-c)` over {axis.label} ({fit.n} runs): "
                f"a = {fit.a:.4g}, b = {fit.b:.4g}, c = {fit.c:.4g} (RMSE {fit.rmse:.3g}).",
                "",
            ]
        elif fit is not None:
            report += [f"Scaling law over {axis.label}: {fit}.", ""]
        plots = [
            plot_accuracy(gdf, axis, fit, out_dir / f"{group}_accuracy.png"),
            plot_curves(group_runs, out_dir / f"{group}_curves.png"),
            plot_throughput(gdf, out_dir / f"{group}_throughput.png"),
            plot_halting(group_runs, out_dir / f"{group}_halting.png"),
        ]
        report += [f"![{group} {p.split('_', 1)[1][:-4]}]({p})" for p in plots if p] + [""]
    (out_dir / "report.md").write_text("\n".join(report))
    return df


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--out-dir", default="reports")
    parser.add_argument("--wandb", action="store_true", help="read the runs from W&B instead of --runs-dir")
    parser.add_argument("--wandb-entity", default=None)
    args = parser.parse_args(argv)
    runs = load_wandb(args.wandb_entity) if args.wandb else load_local(Path(args.runs_dir))
    if not runs:
        print(f"no runs found in {'W&B' if args.wandb else args.runs_dir}", file=sys.stderr)
        return 1
    df = analyze(runs, Path(args.out_dir))
    print(f"{len(df)} runs -> {Path(args.out_dir) / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
