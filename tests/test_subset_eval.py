"""Subset evaluation (`eval_subset`): intermediate evaluations visit a fixed, seeded subset of the
test set exactly once, the same on any process count and after a resume; the final evaluation
uses the full set, and the metric names say which is which."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import training.evaluation
from dataset.puzzle_dataset import PuzzleDataset, eval_batches, eval_subset
from models.losses import IGNORE_LABEL_ID
from pretrain_jax import train
from tests.pretrain_runs import TINY
from tests.test_puzzle_dataset import _build, _example_ids
from training.config import ConfigError, compose, validate
from training.evaluation import subset_examples


@pytest.fixture()
def two_sets(tmp_path):
    """A test split of two sets (two data paths): global example ids span both."""
    _build(tmp_path / "a", seed=0, num_groups=9)
    _build(tmp_path / "b", seed=1, num_groups=11)
    return PuzzleDataset([str(tmp_path / "a"), str(tmp_path / "b")], "test")


def test_the_subset_is_a_function_of_the_seed_and_the_test_set(two_sets):
    n = two_sets.num_examples
    chosen = eval_subset(two_sets, 10, seed=3)
    assert len(chosen) == len(set(chosen)) == 10 and list(chosen) == sorted(chosen)
    assert 0 <= chosen[0] and chosen[-1] < n
    np.testing.assert_array_equal(chosen, eval_subset(two_sets, 10, seed=3))
    assert not np.array_equal(chosen, eval_subset(two_sets, 10, seed=4))
    np.testing.assert_array_equal(eval_subset(two_sets, n + 5, seed=3), np.arange(n))
    # A subset as large as the test set is the full evaluation.
    assert subset_examples(two_sets, n, seed=3) is None and subset_examples(two_sets, None, seed=3) is None
    np.testing.assert_array_equal(subset_examples(two_sets, 10, seed=3), chosen)


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_subset_batches_visit_each_chosen_example_once(two_sets, process_count):
    chosen = eval_subset(two_sets, 13, seed=0)
    first = {name: start for name, start, _ in two_sets.sets}
    seen = []
    for p in range(process_count):
        for set_name, batch in eval_batches(two_sets, 8, process_index=p, process_count=process_count, examples=chosen):
            assert len(batch["inputs"]) == 8 // process_count
            real = batch["puzzle_identifiers"] != 0
            seen.extend(first[set_name] + _example_ids(batch)[real])
    assert sorted(seen) == list(chosen)


def test_eval_subset_must_be_positive():
    with pytest.raises(ConfigError, match="eval_subset"):
        validate(compose("quickstart", ["eval_subset=0"]))


# End to end: train(cfg) in-process on the quick-start data (256 test puzzles). With batch 256 an
# eval interval (1 epoch of 1,000 examples) is 3 steps.
SUBSET = 40
OVERRIDES = [*TINY, "global_batch_size=256", "epochs=100", "eval_interval=1", f"eval_subset={SUBSET}"]


def _rows_of(inputs: np.ndarray) -> Counter:
    return Counter(row.tobytes() for row in inputs)


@pytest.mark.timeout(900)
def test_intermediate_evaluations_use_the_subset_across_a_resume_and_the_final_one_all(tmp_path, data, monkeypatch):
    visits: list[tuple[bool, Counter]] = []  # (subset?, rows evaluated) per evaluation pass

    def recording(dataset, *args, examples=None, **kwargs):
        rows = Counter()
        for set_name, batch in eval_batches(dataset, *args, examples=examples, **kwargs):
            real = (batch["labels"] != IGNORE_LABEL_ID).any(axis=1)  # padding is unlabelled
            rows += _rows_of(batch["inputs"][real])
            yield set_name, batch
        visits.append((examples is not None, rows))

    monkeypatch.setattr(training.evaluation, "eval_batches", recording)
    run_dir = tmp_path / "run"

    def cfg(max_steps):
        return validate(compose("quickstart", [*OVERRIDES, f"data_paths=[{data}]", f"run_dir={run_dir}", max_steps]))

    # Session 1 evaluates the subset at step 3 and everything at 7; the resumed session 2 the
    # subset at step 9 and everything at 13.
    assert train(cfg("max_steps=7")).status == "completed"
    assert train(cfg("max_steps=13")).status == "completed"

    test = PuzzleDataset([data], "test")
    everything = _rows_of(
        test.read_rows(np.arange(test.num_examples), test.puzzles_of(np.arange(test.num_examples)))["inputs"]
    )
    ids = eval_subset(test, SUBSET, seed=0)
    chosen = _rows_of(test.read_rows(ids, test.puzzles_of(ids))["inputs"])
    assert visits == [(True, chosen), (False, everything), (True, chosen), (False, everything)]

    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: r for r in lines if any(k.startswith("eval") for k in r)}
    assert sorted(evals) == [3, 7, 9, 13]
    for step in (3, 9):
        assert evals[step]["eval_subset/all/count"] == SUBSET and not any(k.startswith("eval/") for k in evals[step])
    for step in (7, 13):
        assert evals[step]["eval/all/count"] == test.num_examples
        assert not any(k.startswith("eval_subset") for k in evals[step])
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    assert summary["final_metrics"] == {k: v for k, v in evals[13].items() if k.startswith("eval/")}


@pytest.mark.timeout(600)
def test_a_run_resumes_with_another_eval_subset_and_peak_tflops(tmp_path, data):
    """Neither knob changes the state: a checkpoint stays resumable when they change."""
    base = [*TINY, f"data_paths=[{data}]", f"run_dir={tmp_path / 'run'}"]
    assert train(validate(compose("quickstart", [*base, "max_steps=2"]))).status == "completed"
    resumed = train(validate(compose("quickstart", [*base, "max_steps=4", "eval_subset=40", "peak_tflops=3"])))
    assert resumed.status == "completed" and resumed.step == 4, resumed.error
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["cost"]["steps"] == 4 and summary["cost"]["mfu"] > 0
