"""What runs cost before they run: steps, datasets, analytic FLOPs and device time.

    python experiments/run_batch.py --plan [NAMES...] [--pattern GLOB] [--peak-tflops 989] [--mfu 0.3]
        [--replicate-duplicates] [--json PATH|-] [-- overrides]

Per run: optimizer steps, the dataset and whether it is built, training FLOPs (models/flops.py
per step, summed over the steps; the curriculum's shallower steps included), evaluation FLOPs
(every evaluation runs halt_max_steps forward ACT steps over the padded test set), and device
hours at an assumed MFU. "Before" trains every experiment on its own and evaluates the full
test set every time. "After" trains each distinct training once (experiments/dedup.py, with one
training keeping every EMA shadow its experiments report and evaluating each), evaluates the
intermediate evaluations on `eval_subset` test examples and the final one on the full set.
Dataset sizes come from the dataset's metadata when it is built, else from the official sizes
below.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dataset.errors import DatasetError
from dataset.format import load_metadata, merge_metadata
from experiments.dedup import MULTI_EMA, Training, group_trainings
from experiments.table import BY_NAME, parse_dataset_path, planned_eval_subset
from models.flops import analytic_flops, eval_flops
from models.trm import ModelDims
from training.config import PretrainConfig
from training.schedules import recursion_depth

ROOT = Path(__file__).resolve().parents[1]
SUDOKU_DIMS = ModelDims(vocab_size=11, seq_len=81, num_puzzle_identifiers=1)
SUDOKU_EXTREME_TEST = 422_786  # puzzles in the official Sudoku-Extreme test.csv
SCHEMA = PretrainConfig.model_fields


@dataclass(frozen=True)
class DataSize:
    dims: ModelDims
    train_groups: int
    mean_puzzle_examples: float
    test_examples: int
    source: str  # where the numbers come from


# The official datasets' sizes, for planning before they are built. ARC: every task of
# ../shared/data/arc in 1 + 1000 versions; groups = tasks, examples per puzzle = pairs per task
# (test-set tasks keep their test pairs for the test split), test examples = 1001 x test pairs.
DEFAULT_SIZES: dict[str, DataSize] = {
    "maze-30x30-hard-1k": DataSize(ModelDims(6, 900, 1), 1000, 1.0, 1000, "official size (1000 mazes per split)"),
    "arc1concept-aug-1000": DataSize(
        ModelDims(12, 900, 960 * 1001 + 1), 960, 3988 / 960, 419 * 1001, "official size (ARC-AGI-1 + ConceptARC)"
    ),
    "arc2concept-aug-1000": DataSize(
        ModelDims(12, 900, 1280 * 1001 + 1), 1280, 5573 / 1280, 172 * 1001, "official size (ARC-AGI-2 + ConceptARC)"
    ),
}


def _local(path: str) -> str:
    return path if "://" in path or Path(path).is_absolute() else str(ROOT / path)


def _built_size(cfg: PretrainConfig) -> DataSize | None:
    """Sizes from the built dataset's metadata; without a test split, training does not evaluate."""
    train_paths = [_local(p) for p in cfg.data_paths]
    test_paths = [_local(p) for p in cfg.data_paths_test] or train_paths
    try:
        train = merge_metadata([load_metadata(p, "train") for p in train_paths], train_paths)
    except (DatasetError, OSError):
        return None
    try:
        test = merge_metadata([load_metadata(p, "test") for p in test_paths], test_paths)
        examples, source = round(test.total_puzzles * test.mean_puzzle_examples), "dataset metadata"
    except (DatasetError, OSError):
        examples, source = 0, "dataset metadata; no test split, so no evaluation"
    dims = ModelDims(train.vocab_size, train.seq_len, train.num_puzzle_identifiers)
    return DataSize(dims, train.total_groups, train.mean_puzzle_examples, examples, source)


def _default_size(cfg: PretrainConfig) -> DataSize | None:
    if len(cfg.data_paths) != 1 or cfg.data_paths_test:
        return None
    sudoku = parse_dataset_path(cfg.data_paths[0])
    if sudoku is not None:  # one example per puzzle; augmentations stay inside a puzzle's group
        return DataSize(SUDOKU_DIMS, sudoku[0], 1.0, SUDOKU_EXTREME_TEST, "official size (Sudoku-Extreme)")
    return DEFAULT_SIZES.get(cfg.data_paths[0].rstrip("/").rsplit("/", 1)[-1])


def data_size(cfg: PretrainConfig) -> tuple[DataSize | None, bool]:
    """(sizes, whether the dataset is built); sizes None when neither metadata nor default exists."""
    if cfg.data_generator == "smoke":  # generated at start: num_puzzles train, half as many test
        n = cfg.smoke.num_puzzles
        return DataSize(SUDOKU_DIMS, n, 1.0, max(1, n // 2), "smoke data (generated at start)"), True
    built = _built_size(cfg)
    return (built, True) if built is not None else (_default_size(cfg), False)


def evaluation_steps(cfg: PretrainConfig, total_steps: int) -> list[int]:
    """The steps at which pretrain_jax.py evaluates: every eval_interval epochs from
    min_eval_interval on, except one that would nearly repeat the final evaluation, then the end."""
    end = min(total_steps, cfg.max_steps or total_steps)
    every = max(1, total_steps * cfg.eval_interval // cfg.epochs)
    periodic = [s for s in range(every, end + 1, every) if s // every >= cfg.min_eval_interval and end - s >= every]
    return [*periodic, end]


@dataclass(frozen=True)
class RunCost:
    total_steps: int  # the schedule's length
    steps: int  # what the run trains (max_steps applied)
    train_flops: int
    evaluations: int
    eval_flops_full: int  # every evaluation on the full test set
    eval_flops_subset: int  # intermediate evaluations on the subset, the final one on the full set


def run_cost(cfg: PretrainConfig, size: DataSize, eval_subset: int | None) -> RunCost:
    examples_per_epoch = size.train_groups * size.mean_puzzle_examples
    total = cfg.total_steps(size.train_groups, size.mean_puzzle_examples)
    schedule = evaluation_steps(cfg, total)
    end = schedule[-1]
    evals = schedule if size.test_examples else []
    B, a = cfg.global_batch_size, cfg.arch

    def depth(step: int) -> tuple[int, int]:
        return recursion_depth(cfg, step * B / examples_per_epoch)

    if cfg.curriculum.enabled:
        depths = Counter(depth(s) for s in range(end))
    else:
        depths = Counter({(a.H_cycles, a.L_cycles): end})
    train = sum(n * analytic_flops(a, size.dims, B, H, L)["total"] for (H, L), n in depths.items())

    eval_batch = B // cfg.grad_accum_steps  # the last batch of the test set is padded to full size

    def one_eval(step: int, examples: int) -> int:
        return eval_flops(a, size.dims, math.ceil(examples / eval_batch) * eval_batch, *depth(step))

    n = size.test_examples
    subset = min(eval_subset or n, n)
    full = sum(one_eval(s, n) for s in evals)
    partial = sum(one_eval(s, n if s == end else subset) for s in evals)  # the final evaluation is at `end`
    return RunCost(total, end, train, len(evals), full, partial)


def eval_subset_of(name: str, cfg: PretrainConfig) -> int | None:
    """The run's own `eval_subset` once the schema has it; until then the study table's value."""
    fields = cfg.model_dump()
    return fields["eval_subset"] if "eval_subset" in fields else planned_eval_subset(name)


COST_COLUMNS = ("steps", "evaluations", "train_flops", "eval_flops", "flops_before", "flops_dedup", "flops_after")


def plan_rows(cfgs: Mapping[str, PretrainConfig], selected: list[str], *, replicate: bool = False) -> pd.DataFrame:
    """One row per selected experiment: its cost on its own (`flops_before`), and after the
    savings its training's cost (`flops_dedup` with full-set evaluations, `flops_after` with
    subset evaluations), carried by the first selected run of each training and 0 for the others.
    Trainings are found over all of `cfgs` (the table), as run_batch.py trains them."""
    trainings = group_trainings({n: c.model_dump() for n, c in cfgs.items()}, multi_ema=True, replicate=replicate)
    carriers: dict[str, str] = {}  # canonical run -> the first selected run of its training
    for name in selected:
        carriers.setdefault(trainings[name].canonical, name)
    return pd.DataFrame(
        [
            _row(name, cfgs[name], trainings[name], carries=carriers[trainings[name].canonical] == name)
            for name in selected
        ]
    )


def _row(name: str, cfg: PretrainConfig, training: Training, *, carries: bool) -> dict:
    size, built = data_size(cfg)
    subset = eval_subset_of(name, cfg)
    row = {
        "name": name,
        "group": BY_NAME[name].group if name in BY_NAME else cfg.experiment_group,
        "trains_as": training.canonical,
        "carries": carries,  # the selected run that pays for its training
        "replica": training.replica,
        "weightings": len(training.weightings),
        "dataset": ",".join(cfg.data_paths),
        "dataset_built": built,
        "sizes_from": size.source if size else "unknown: not built and no default size",
        "eval_subset": subset,
    }
    if size is None:
        return {**row, **dict.fromkeys(COST_COLUMNS)}
    cost = run_cost(cfg, size, subset)
    # Floats: a study's FLOP counts overflow int64 columns.
    train, full, partial = float(cost.train_flops), float(cost.eval_flops_full), float(cost.eval_flops_subset)
    n = len(training.weightings)
    return {
        **row,
        "steps": cost.steps,
        "evaluations": cost.evaluations,
        "train_flops": train,
        "eval_flops": full,
        "flops_before": train + full,
        "flops_dedup": train + n * full if carries else 0.0,
        "flops_after": train + n * partial if carries else 0.0,
    }


def device_hours(flops: float, *, peak_tflops: float, mfu: float) -> float:
    return flops / (peak_tflops * 1e12 * mfu) / 3600


def totals(df: pd.DataFrame, *, peak_tflops: float, mfu: float) -> dict:
    known = df[df["flops_before"].notna()]
    before, dedup, after = (float(known[c].sum()) for c in ("flops_before", "flops_dedup", "flops_after"))
    hours = {k: device_hours(v, peak_tflops=peak_tflops, mfu=mfu) for k, v in (("before", before), ("after", after))}
    return {
        "experiments": len(df),
        "trainings": int(df["carries"].sum()),
        "unknown_cost": sorted(df.loc[df["flops_before"].isna(), "name"]),
        "peak_tflops": peak_tflops,
        "mfu": mfu,
        "total_flops_before": before,
        "total_flops_dedup": dedup,
        "total_flops_after": after,
        "device_hours_before": hours["before"],
        "device_hours_after": hours["after"],
    }


def _sci(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}"


def render(df: pd.DataFrame, *, peak_tflops: float, mfu: float) -> str:
    t = totals(df, peak_tflops=peak_tflops, mfu=mfu)
    shown = df.assign(
        trains_as=[
            ("" if a == n else "= " + a) + (f" (replica {r})" if r else "")
            for a, n, r in zip(df["trains_as"], df["name"], df["replica"], strict=True)
        ],
        dataset=[d + ("" if b else " (not built)") for d, b in zip(df["dataset"], df["dataset_built"], strict=True)],
        device_h_after=[
            _sci(device_hours(f, peak_tflops=peak_tflops, mfu=mfu)) if pd.notna(f) else "" for f in df["flops_after"]
        ],
    )
    columns = [
        "name",
        "group",
        "trains_as",
        "dataset",
        "steps",
        "evaluations",
        "train_flops",
        "eval_flops",
        "flops_before",
        "flops_after",
        "device_h_after",
    ]
    formatters = {c: _sci for c in ("train_flops", "eval_flops", "flops_before", "flops_after")}
    share = t["total_flops_after"] / t["total_flops_before"] if t["total_flops_before"] else math.nan
    lines = [
        shown[columns].to_string(index=False, formatters=formatters, na_rep=""),
        "",
        f"{t['experiments']} experiments, {t['trainings']} trainings; device time at {peak_tflops:g} TFLOP/s per "
        f"device and an assumed {100 * mfu:g}% MFU (--peak-tflops, --mfu)",
        f"total_flops_before {t['total_flops_before']:.4g} ({t['device_hours_before']:,.0f} device-hours): every "
        "experiment trained on its own, every evaluation on the full test set",
        f"  after deduplication and the EMA merge: {t['total_flops_dedup']:.4g}",
        f"total_flops_after  {t['total_flops_after']:.4g} ({t['device_hours_after']:,.0f} device-hours, "
        f"{100 * share:.1f}% of before): plus intermediate evaluations on eval_subset examples, final on the full set",
    ]
    pending = [k for k, ready in (("ema_rates", MULTI_EMA), ("eval_subset", "eval_subset" in SCHEMA)) if not ready]
    if pending:
        lines.append(f"(after assumes {' and '.join(pending)}, which training/config.py does not have yet)")
    if t["unknown_cost"]:
        lines.append(f"not counted (dataset not built, no default size): {', '.join(t['unknown_cost'])}")
    return "\n".join(lines)


def plan_json(df: pd.DataFrame, *, peak_tflops: float, mfu: float) -> dict:
    runs = df.astype(object).where(df.notna(), None).to_dict(orient="records")
    return {**totals(df, peak_tflops=peak_tflops, mfu=mfu), "runs": runs}


def cost_line(cfg: PretrainConfig) -> str:
    """One line for a dry run: what this run, as configured, trains and evaluates."""
    size, built = data_size(cfg)
    if size is None:
        return f"steps and FLOPs unknown: {', '.join(cfg.data_paths)} is not built and has no default size"
    subset = cfg.model_dump().get("eval_subset")
    c = run_cost(cfg, size, subset)
    where = size.source if built else f"{size.source}; not built yet"
    evaluations = f"{c.evaluations} evaluation{'' if c.evaluations == 1 else 's'}"
    intermediate = f", intermediate ones over {subset:,}" if subset else ""
    return (
        f"{c.steps:,} steps; FLOPs {c.train_flops:.3g} training + {c.eval_flops_subset:.3g} evaluation "
        f"({evaluations} x {cfg.arch.halt_max_steps} ACT steps over {size.test_examples:,} test examples"
        f"{intermediate}; sizes from {where})"
    )
