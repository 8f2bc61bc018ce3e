"""The study planner (run_batch.py --plan, experiments/plan.py): its arithmetic, checked against
the FLOP formula of models/flops.py and the training loop's evaluation schedule."""

from __future__ import annotations

import json
import math

import pytest

from experiments import plan, run_batch
from experiments.table import EVAL_SUBSET, STUDY
from models.flops import analytic_flops, forward_flops
from models.trm import ModelDims
from training.config import compose, validate

SUDOKU = ModelDims(vocab_size=11, seq_len=81, num_puzzle_identifiers=1)
TEST_PUZZLES = 422_786  # the official Sudoku-Extreme test set
BATCH = 6144


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("plan") / "plan.json"
    assert run_batch.main(["--plan", "--json", str(out)]) == 0
    return json.loads(out.read_text())


def rows(result: dict) -> dict[str, dict]:
    return {r["name"]: r for r in result["runs"]}


def test_the_study_costs_at_most_half_after_the_savings(study, capsys):
    assert [r["name"] for r in study["runs"]] == [e.name for e in STUDY]
    assert study["total_flops_after"] <= 0.5 * study["total_flops_before"]
    # 68 experiments hold 54 distinct trainings; exp08's EMA rates then share the baseline's.
    assert (study["experiments"], study["trainings"]) == (68, 50)
    assert run_batch.main(["--plan"]) == 0
    out = capsys.readouterr().out
    assert f"total_flops_before {study['total_flops_before']:.4g}" in out
    assert f"total_flops_after  {study['total_flops_after']:.4g}" in out
    assert "989 TFLOP/s" in out and "30% MFU" in out


def test_baseline_arithmetic_follows_the_flop_formula(study):
    arch = validate(compose("baseline")).arch
    steps = int(50000 * 1000 * 1 / BATCH)  # epochs x groups x examples per puzzle / batch
    # The loop evaluates every eval_interval / epochs = 1/10 of the schedule (813 steps) while at
    # least 813 steps remain (after steps 813, ..., 9 x 813), then once more at the end.
    every = steps * 5000 // 50000
    evaluations = len(range(every, steps - every + 1, every)) + 1
    assert evaluations == 10
    rows_full = math.ceil(TEST_PUZZLES / BATCH) * BATCH  # the last eval batch is padded
    rows_subset = math.ceil(EVAL_SUBSET / BATCH) * BATCH
    train = steps * analytic_flops(arch, SUDOKU, BATCH, 3, 6)["total"]
    one_full = 16 * forward_flops(arch, SUDOKU, rows_full, 3, 6)
    one_subset = 16 * forward_flops(arch, SUDOKU, rows_subset, 3, 6)

    b = rows(study)["baseline"]
    assert (b["steps"], b["evaluations"], b["eval_subset"]) == (steps, evaluations, EVAL_SUBSET)
    assert b["train_flops"] == pytest.approx(train, rel=1e-12)
    assert b["eval_flops"] == pytest.approx(evaluations * one_full, rel=1e-12)
    assert b["flops_before"] == pytest.approx(train + evaluations * one_full, rel=1e-12)
    # One training serves exp08's five weightings (raw + four EMA rates), each evaluated.
    assert b["weightings"] == 5
    assert b["flops_after"] == pytest.approx(train + 5 * (9 * one_subset + one_full), rel=1e-12)


def test_a_selection_pays_once_for_a_training_it_shares(capsys):
    assert run_batch.main(["--plan", "--json", "-", "exp08b", "exp01c", "exp09b"]) == 0
    result = json.loads(capsys.readouterr().out)
    by_name = rows(result)
    # exp08b and exp01c are the baseline's training (run_batch.py trains it as "baseline"):
    # the first of them pays for it, with the baseline's five EMA weightings.
    assert by_name["exp08b"]["trains_as"] == by_name["exp01c"]["trains_as"] == "baseline"
    assert by_name["exp08b"]["flops_after"] > 0 and by_name["exp01c"]["flops_after"] == 0
    assert by_name["exp08b"]["weightings"] == 5 and result["trainings"] == 2


def test_totals_add_up_and_aliases_cost_nothing_after(study):
    by_name = rows(study)
    assert study["total_flops_before"] == pytest.approx(sum(r["flops_before"] for r in study["runs"]), rel=1e-12)
    assert study["total_flops_after"] == pytest.approx(sum(r["flops_after"] for r in study["runs"]), rel=1e-12)
    for name in ("exp01c", "exp07b", "exp08b", "contrib02_baseline"):
        assert by_name[name]["trains_as"] == "baseline" and by_name[name]["flops_after"] == 0
    # A run that changes a training setting is its own training and keeps its cost.
    assert by_name["exp09b"]["trains_as"] == "exp09b" and by_name["exp09b"]["flops_after"] > 0
    curriculum, baseline = by_name["contrib01_curriculum"], by_name["baseline"]
    assert curriculum["train_flops"] < baseline["train_flops"]  # shallower recursion early on
    assert study["device_hours_before"] == pytest.approx(study["total_flops_before"] / (989e12 * 0.3) / 3600)


def test_replicating_duplicates_trains_them_again(tmp_path, capsys):
    assert run_batch.main(["--plan", "--replicate-duplicates", "--json", "-", "--pattern", "exp0[17]*"]) == 0
    by_name = rows(json.loads(capsys.readouterr().out))  # "-": JSON alone on stdout
    # Replicas are numbered over the table: exp07b is the baseline's 9th copy.
    assert by_name["exp07b"]["trains_as"] == "exp07b" and by_name["exp07b"]["replica"] == 9
    assert by_name["exp07b"]["flops_after"] == pytest.approx(by_name["exp01c"]["flops_after"], rel=1e-12)


def _write_split(root, split: str, **meta) -> None:
    (root / split).mkdir(parents=True)
    base = {"pad_id": 0, "ignore_label_id": 0, "blank_identifier_id": 0, "sets": ["all"], "num_puzzle_identifiers": 1}
    (root / split / "dataset.json").write_text(json.dumps({**base, **meta}))


def test_built_datasets_are_measured_and_unknown_ones_reported(tmp_path):
    ds = tmp_path / "ds"
    _write_split(ds, "train", vocab_size=11, seq_len=81, total_groups=300, total_puzzles=300, mean_puzzle_examples=2.0)
    _write_split(ds, "test", vocab_size=11, seq_len=81, total_groups=50, total_puzzles=50, mean_puzzle_examples=1.0)
    cfg = validate(compose("exp09b", [f"data_paths=[{ds}]"]))
    (row,) = plan.plan_rows({"exp09b": cfg}, ["exp09b"]).to_dict(orient="records")
    assert row["steps"] == int(50000 * 300 * 2.0 / BATCH) and row["dataset_built"]
    assert row["eval_flops"] == pytest.approx(10 * 16 * forward_flops(cfg.arch, SUDOKU, BATCH, 3, 6), rel=1e-12)

    nowhere = {n: validate(compose(n, [f"data_paths=[{tmp_path / 'nowhere'}]"])) for n in ("exp09b", "exp09c")}
    df = plan.plan_rows(nowhere, list(nowhere))
    assert plan.totals(df, peak_tflops=989, mfu=0.3)["total_flops_before"] == 0
    out = plan.render(df, peak_tflops=989, mfu=0.3)
    assert "not counted (dataset not built, no default size): exp09b, exp09c" in out


def test_bad_numbers_are_refused(capsys):
    with pytest.raises(SystemExit):
        run_batch.main(["--plan", "--mfu", "0"])
    assert "0 < --mfu <= 1" in capsys.readouterr().err
