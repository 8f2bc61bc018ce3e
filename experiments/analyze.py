"""Collect the scaling study's runs into one results table, plot each group, fit scaling laws,
and write a Markdown report.

    python experiments/analyze.py --runs-dir runs --out-dir reports [--include-smoke]
    python experiments/analyze.py --out-dir reports --wandb --wandb-entity ENTITY

A run is a directory holding config.yaml (resolved config), metrics.jsonl (train and eval
lines) and, once finished, summary.json. Unfinished runs are included with their latest
evaluation; an alias (summary.json status "alias", written by run_batch.py) gets its own row
with the metrics of the training it shares (`alias_of`); a study experiment with no run yet
gets a "pending" row, so <out-dir>/results.csv has one row per experiment. Runs trained as
replicas (run_batch.py --replicate-duplicates) are summarised as mean and spread. A damaged
run is skipped with a warning naming its file; smoke runs are left out unless --include-smoke.
Writes <out-dir>/results.csv, <out-dir>/<group>_*.png and <out-dir>/report.md.
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

from experiments.dedup import training_key, weighting  # noqa: E402
from experiments.table import BY_NAME, GROUPS, STUDY, parse_dataset_path  # noqa: E402

MIN_FIT_POINTS = 4
SUDOKU_DIMS = {"vocab_size": 11, "seq_len": 81, "num_puzzle_identifiers": 1}


# Cost fields of a run's summary.json (its "cost" object, else top level), copied to the table.
COST_KEYS = (
    "device_kind",
    "num_devices",
    "compile_s",
    "train_s",
    "eval_s",
    "checkpoint_s",
    "device_hours",
    "examples_per_s",
    "mfu",
)


@dataclass
class Run:
    config: dict[str, Any]
    history: list[dict[str, Any]]
    summary: dict[str, Any] | None
    source: str = ""  # where it was read from, for warnings

    @property
    def is_smoke(self) -> bool:
        return bool((self.config.get("smoke") or {}).get("enabled") or (self.summary or {}).get("smoke"))


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


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _load_run(cfg_file: Path) -> Run:
    d = cfg_file.parent
    config = yaml.safe_load(cfg_file.read_text())
    if not isinstance(config, dict):
        raise ValueError("not a mapping of settings")
    summary = json.loads((d / "summary.json").read_text()) if (d / "summary.json").exists() else None
    if summary is not None and not isinstance(summary, dict):
        raise ValueError(f"{d / 'summary.json'} is not a JSON object")
    metrics = d / "metrics.jsonl"
    if summary and summary.get("status") == "alias":  # an alias has no metrics of its own
        metrics = Path(summary.get("metrics_file") or metrics)
    return Run(config, _read_jsonl(metrics), summary, str(d))


def load_local(runs_dir: Path) -> list[Run]:
    runs = []
    for cfg_file in sorted(runs_dir.rglob("config.yaml")):
        try:
            runs.append(_load_run(cfg_file))
        except (OSError, UnicodeDecodeError, yaml.YAMLError, json.JSONDecodeError, ValueError) as err:
            warn(f"skipped the damaged run {cfg_file.parent} ({cfg_file.name} or summary.json: {err})")
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
            runs.append(Run(dict(r.config), history, summary, f"W&B {project}/{r.id}"))
    return runs


# ---------------------------------------------------------------- the table


def eval_metric(metrics: dict[str, Any], name: str, prefix: str = "eval") -> Any:
    """<prefix>/<set>/<name>, preferring the set "all". Full-set evaluations log under eval/,
    evaluations on a subset of the test set under eval_subset/: the two are never mixed."""
    if f"{prefix}/all/{name}" in metrics:
        return metrics[f"{prefix}/all/{name}"]
    for key, value in metrics.items():
        if key.startswith(f"{prefix}/") and key.endswith(f"/{name}") and key.count("/") == 2:
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


def _cost(summary: dict[str, Any]) -> dict[str, Any]:
    cost = summary.get("cost") if isinstance(summary.get("cost"), dict) else summary
    return {k: cost.get(k) for k in COST_KEYS}


def row(run: Run) -> dict[str, Any]:
    c, arch, summary = run.config, run.config.get("arch", {}), run.summary or {}
    trains = [h for h in run.history if "train/lm_loss" in h]
    final = final_metrics(run)
    data = parse_dataset_path((c.get("data_paths") or [""])[0]) or (math.nan, math.nan)
    speeds = [h["train/examples_per_sec"] for h in trains if h.get("train/examples_per_sec") is not None]
    alias = summary.get("status") == "alias"
    return {
        "name": c.get("experiment_name"),
        "group": c.get("experiment_group"),
        "status": summary.get("status", "running"),
        "smoke": run.is_smoke,
        "alias_of": summary.get("alias_of"),
        "seed": c.get("seed"),
        # Trained runs with equal settings_id (the training's settings but the seed) and weights
        # are replicas of one training.
        "settings_id": training_key({k: v for k, v in c.items() if k != "seed"}),
        "weights": weighting(c),
        "exact_accuracy": eval_metric(final, "exact_accuracy"),
        "accuracy": eval_metric(final, "accuracy"),
        "adaptive_exact_accuracy": eval_metric(final, "adaptive_exact_accuracy"),
        "adaptive_steps": eval_metric(final, "adaptive_steps"),
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
        "step": summary.get("step", trains[-1]["step"] if trains else None),
        "wall_time_s": None if alias else summary.get("wall_time_s"),
        "peak_memory_bytes": None if alias else summary.get("peak_memory_bytes"),
        # The median ignores the first, compile-bound, logging window.
        "examples_per_sec": float(np.median(speeds)) if speeds and not alias else math.nan,
        **({} if alias else _cost(summary)),
        "source": run.source,
    }


def _rows(runs: list[Run]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        try:
            rows.append(row(run))
        except (TypeError, ValueError, AttributeError) as err:  # wrong types in a damaged file
            warn(f"skipped the damaged run {run.source} ({err})")
    return rows


def _replicates(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, spread and count of exact accuracy over the trained runs of one training and weighting."""
    trained = df[~df["status"].isin(["alias", "pending"]) & df["exact_accuracy"].notna()]
    stats = trained.groupby(["settings_id", "weights"])["exact_accuracy"].agg(["mean", "std", "count"])
    stats.columns = ["exact_accuracy_mean", "exact_accuracy_std", "replicates"]
    return df.join(stats, on=["settings_id", "weights"])


def collect(runs: list[Run]) -> pd.DataFrame:
    """The results table: a row per run read, plus a "pending" row per study experiment not run."""
    rows = _rows(runs)
    seen = {r["name"] for r in rows}
    rows += [{"name": e.name, "group": e.group, "status": "pending"} for e in STUDY if e.name not in seen]
    df = pd.DataFrame(rows)
    if not len(df):
        return df
    df = _replicates(df)
    order = {e.name: i for i, e in enumerate(BY_NAME.values())}
    df = df.assign(_order=df["name"].map(order)).sort_values(["_order", "name"], ignore_index=True)
    return df.drop(columns="_order")


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


def _label(run: Run) -> str:
    alias = (run.summary or {}).get("alias_of")
    return f"{run.config.get('experiment_name')}" + (f" (= {alias})" if alias else "")


def _eval_points(run: Run, prefix: str) -> list[tuple[int, float]]:
    return [(h["step"], v) for h in run.history if (v := eval_metric(h, "exact_accuracy", prefix)) is not None]


def plot_curves(group_runs: list[Run], path: Path) -> str:
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for run in group_runs:
        for ax, key in zip(axes[:2], ("train/lm_loss", "train/exact_accuracy"), strict=True):
            pts = [(h["step"], h[key]) for h in run.history if h.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), "-", label=_label(run))
        full, subset = _eval_points(run, "eval"), _eval_points(run, "eval_subset")
        if full:
            axes[2].plot(*zip(*full, strict=True), "o-", label=_label(run))
        if subset:
            axes[2].plot(*zip(*subset, strict=True), "x--", label=f"{_label(run)} (test subset)")
    for ax, title in zip(axes, ("train lm loss", "train exact accuracy", "test exact accuracy"), strict=True):
        ax.set_xlabel("step")
        ax.set_title(title)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def final_metrics(run: Run) -> dict[str, Any]:
    evals = [h for h in run.history if any(k.startswith("eval/") for k in h)]
    return (run.summary or {}).get("final_metrics") or (evals[-1] if evals else {})


def plot_act_steps(group_runs: list[Run], path: Path) -> str | None:
    """Final exact accuracy if every puzzle stopped after ACT step 1, 2, ..., N."""
    curves = [(_label(r), eval_metric(final_metrics(r), "exact_accuracy_per_step")) for r in group_runs]
    curves = [(label, c) for label, c in curves if c]
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, c in curves:
        ax.plot(np.arange(1, len(c) + 1), c, ".-", label=label)
    ax.set_xlabel("ACT steps at test time")
    ax.set_ylabel("test exact accuracy")
    ax.legend(fontsize=7)
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


RESULT_COLUMNS = [
    "name",
    "group",
    "status",
    "alias_of",
    "exact_accuracy",
    "accuracy",
    "adaptive_exact_accuracy",
    "params",
    "step",
    "wall_time_s",
    "device_hours",
]


def _group_section(group: str, df: pd.DataFrame, runs: list[Run], out_dir: Path) -> list[str]:
    gdf = df[(df["group"] == group) & (df["status"] != "pending")].reset_index(drop=True)
    if not len(gdf):
        return []
    group_runs = [r for r in runs if r.config.get("experiment_group") == group]
    axis = AXES.get(group, BY_NAME_AXIS)
    fit = fit_scaling_law(gdf[axis.column], gdf["exact_accuracy"]) if axis.fit else None
    columns = dict.fromkeys(
        ["name", "status", "alias_of", axis.column, "exact_accuracy", "accuracy", "params", "step", "wall_time_s"]
    )
    lines = [f"## {group}", "", _markdown_table(gdf[list(columns)]), ""]
    if isinstance(fit, Fit):
        lines += [
            f"Scaling law `accuracy = a - b * x^(-c)` over {axis.label} ({fit.n} runs): "
            f"a = {fit.a:.4g}, b = {fit.b:.4g}, c = {fit.c:.4g} (RMSE {fit.rmse:.3g}).",
            "",
        ]
    elif fit is not None:
        lines += [f"Scaling law over {axis.label}: {fit}.", ""]
    plots = [
        plot_accuracy(gdf, axis, fit, out_dir / f"{group}_accuracy.png"),
        plot_curves(group_runs, out_dir / f"{group}_curves.png"),
        plot_throughput(gdf, out_dir / f"{group}_throughput.png"),
        plot_halting(group_runs, out_dir / f"{group}_halting.png"),
        plot_act_steps(group_runs, out_dir / f"{group}_act_steps.png"),
    ]
    return lines + [f"![{group} {p.split('_', 1)[1][:-4]}]({p})" for p in plots if p] + [""]


def _replicate_section(df: pd.DataFrame) -> list[str]:
    reps = df[df["replicates"] > 1].sort_values(["settings_id", "name"])
    if not len(reps):
        return []
    spread = zip(reps["exact_accuracy_mean"], reps["exact_accuracy_std"], strict=True)
    table = reps.assign(mean_pm_std=[f"{m:.4g} ± {s:.2g}" for m, s in spread])
    return [
        "## Replicates",
        "",
        "Runs trained from the same settings with different seeds (run_batch.py --replicate-duplicates): "
        "exact accuracy as mean ± sample standard deviation over the replicates.",
        "",
        _markdown_table(table[["name", "group", "seed", "exact_accuracy", "replicates", "mean_pm_std"]]),
        "",
    ]


def analyze(runs: list[Run], out_dir: Path) -> pd.DataFrame:
    out_dir.mkdir(parents=True, exist_ok=True)
    df = collect(runs)
    df.to_csv(out_dir / "results.csv", index=False)
    counts = df["status"].value_counts().to_dict() if len(df) else {}
    report = [
        "# Scaling study report",
        "",
        f"{len(df)} experiments ({', '.join(f'{n} {s}' for s, n in counts.items())}); "
        "results table: [results.csv](results.csv). Aliases are not trained: they report the metrics of the "
        "training they share (`alias_of`).",
        "",
        "## Results",
        "",
        _markdown_table(df[[c for c in RESULT_COLUMNS if c in df.columns]]) if len(df) else "(no runs)",
        "",
        *_replicate_section(df),
    ]
    groups = [g for g in GROUPS if len(df) and g in set(df["group"])]
    groups += sorted(set(df["group"]) - set(groups)) if len(df) else []
    for group in groups:
        report += _group_section(group, df, runs, out_dir)
    (out_dir / "report.md").write_text("\n".join(report))
    return df


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--out-dir", default="reports")
    parser.add_argument("--wandb", action="store_true", help="read the runs from W&B instead of --runs-dir")
    parser.add_argument("--wandb-entity", default=None)
    parser.add_argument("--include-smoke", action="store_true", help="also report smoke runs (marked as such)")
    args = parser.parse_args(argv)
    runs = load_wandb(args.wandb_entity) if args.wandb else load_local(Path(args.runs_dir))
    smoke = [r for r in runs if r.is_smoke]
    if smoke and not args.include_smoke:
        warn(f"left out {len(smoke)} smoke runs (--include-smoke reports them): {', '.join(r.source for r in smoke)}")
        runs = [r for r in runs if not r.is_smoke]
    if not runs:
        print(f"no runs found in {'W&B' if args.wandb else args.runs_dir}", file=sys.stderr)
        return 1
    df = analyze(runs, Path(args.out_dir))
    print(f"{len(df)} experiments -> {Path(args.out_dir) / 'results.csv'}, {Path(args.out_dir) / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
