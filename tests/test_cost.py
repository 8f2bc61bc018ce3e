"""Cost tracking: compile time from JAX's compile events, evaluation and checkpoint time without
the compilation inside them, training as the rest, totals carried over a resume, and the
summary.json `cost` of a real run against the analytic FLOP formula."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dataset.puzzle_dataset import PuzzleDataset
from models.flops import analytic_flops
from models.trm import ModelDims
from pretrain_jax import train
from tests.pretrain_runs import TINY
from training.config import compose, validate
from training.cost import CARRIED, CostClock, covered, summary

KEYS = {"device_kind", "num_devices", "compile_s", "train_s", "eval_s", "checkpoint_s", "device_hours"}
KEYS |= {"examples_per_s", "mfu", "setup_s", "steps", "train_flops"}


def test_covered_counts_overlapping_spans_once_and_clips_to_the_window():
    spans = [(1.0, 3.0), (2.0, 4.0), (2.5, 2.7), (6.0, 7.0), (9.0, 12.0)]
    assert covered(spans, 0.0, 20.0) == pytest.approx(2.0 + 1.0 + 1.0 + 3.0)
    assert covered(spans, 3.5, 10.0) == pytest.approx(0.5 + 1.0 + 1.0)
    assert covered([], 0.0, 5.0) == 0.0 and covered(spans, 4.0, 6.0) == 0.0


def _fresh_program(n: int):
    """A program no cache has seen (its constant is new), so calling it compiles."""
    salt = float(time.time_ns() % 1_000_003) + n
    return jax.jit(lambda x: jnp.sin(x) * salt + jnp.cumsum(x))


@pytest.mark.timeout(120)
def test_compilation_is_taken_out_of_the_sections_that_triggered_it():
    clock = CostClock(session_start=time.time() - 5.0, num_devices=3, prior={"train_s": 100.0, "steps": 7})
    try:
        x = np.arange(4096, dtype=np.float32)
        _fresh_program(0)(x).block_until_ready()  # compiled in the training part of the loop
        t0 = time.time()
        with clock.section("eval"):
            _fresh_program(1)(x).block_until_ready()
            time.sleep(0.2)
        eval_wall = time.time() - t0
        clock.add_steps(2, 1e9)
        t = clock.totals()
    finally:
        clock.close()
    assert set(t) == set(CARRIED)
    assert t["compile_s"] > 0
    # The eval section's own time is its wall time less the compilation inside it.
    assert 0.2 <= t["eval_s"] < eval_wall - 1e-4
    assert t["checkpoint_s"] == 0.0 and t["setup_s"] >= 5.0
    loop = t["compile_s"] + t["train_s"] - 100.0 + t["eval_s"]
    assert loop == pytest.approx(t["device_s"] / 3 - t["setup_s"], abs=0.05)  # the parts make up the loop
    assert t["steps"] == 9 and t["flops"] == 1e9  # the prior session's totals are carried
    # Closed clocks stop listening: a later compilation is not counted.
    _fresh_program(2)(x).block_until_ready()
    assert clock.totals()["compile_s"] == pytest.approx(t["compile_s"])


def test_summary_derives_rates_from_the_totals():
    totals = {k: 0.0 for k in CARRIED} | {"train_s": 10.0, "train_device_s": 40.0, "device_s": 7200.0}
    totals |= {"steps": 20, "flops": 8e15}
    s = summary(totals, global_batch_size=64, peak_tflops=100.0)
    assert s.keys() == KEYS
    assert s["device_hours"] == 2.0 and s["examples_per_s"] == 20 * 64 / 10.0
    assert s["mfu"] == pytest.approx(8e15 / (40.0 * 100e12))
    assert s["device_kind"] == jax.devices()[0].device_kind and s["num_devices"] == jax.device_count()
    assert summary(totals, global_batch_size=64, peak_tflops=None)["mfu"] is None


@pytest.mark.timeout(900)
def test_a_resumed_run_reports_the_cost_of_every_session(tmp_path, data):
    run_dir = tmp_path / "run"

    def cfg(*overrides):
        return validate(
            compose("quickstart", [*TINY, f"data_paths=[{data}]", f"run_dir={run_dir}", "peak_tflops=2", *overrides])
        )

    assert train(cfg("max_steps=3")).status == "completed"
    first = json.loads((Path(run_dir) / "summary.json").read_text())["cost"]
    assert train(cfg("max_steps=5")).status == "completed"
    summary_json = json.loads((Path(run_dir) / "summary.json").read_text())
    cost = summary_json["cost"]

    c, meta = cfg(), PuzzleDataset([data], "train").metadata
    dims = ModelDims(meta.vocab_size, meta.seq_len, meta.num_puzzle_identifiers)
    per_step = analytic_flops(c.arch, dims, c.global_batch_size, c.arch.H_cycles, c.arch.L_cycles)["total"]
    assert cost.keys() == KEYS
    assert (first["steps"], cost["steps"]) == (3, 5)
    assert cost["train_flops"] == 5 * per_step
    assert all(cost[k] > 0 for k in ("setup_s", "compile_s", "train_s", "eval_s", "checkpoint_s")), cost
    assert cost["mfu"] == pytest.approx(cost["train_flops"] / (cost["train_s"] * 2e12), rel=1e-3)
    assert cost["examples_per_s"] == pytest.approx(5 * c.global_batch_size / cost["train_s"], rel=1e-3)
    # Both sessions held the devices for more than the second one's wall time.
    assert cost["device_hours"] * 3600 > summary_json["wall_time_s"] * cost["num_devices"]
