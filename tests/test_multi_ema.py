"""Several EMA shadows in one training (`ema_rates`): each shadow is bit for bit the EMA weights of
a separate single-EMA run, every weighting is evaluated and logged under its own name, and the
shadows are checkpointed and resumed exactly."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pretrain_jax import setup, train
from tests.pretrain_runs import (
    TINY,
    assert_ok,
    assert_trees_close,
    assert_trees_equal,
    launcher_cmd,
    restore,
    run,
    run_env,
    train_args,
)
from tests.test_step import _batches, _setup, run_steps
from training.config import ConfigError, compose, validate
from training.sharding import global_batch

RATES = (0.9, 0.99)
MULTI = ["ema_rates=[0.9,0.99]"]


@pytest.mark.timeout(300)
def test_each_shadow_equals_a_single_ema_run_bit_for_bit():
    losses, multi = run_steps(None, ["ema=false", *MULTI], n=3)
    assert multi.ema_params == {} and sorted(multi.ema_shadows) == ["0.9", "0.99"]
    for rate in RATES:
        single_losses, single = run_steps(None, ["ema=true", f"ema_rate={rate}"], n=3)
        assert single_losses == losses  # the shadows do not touch training
        assert_trees_equal(jax.device_get(multi.params), jax.device_get(single.params))
        assert_trees_equal(jax.device_get(multi.ema_shadows[f"{rate:g}"]), jax.device_get(single.ema_params))


@pytest.mark.timeout(300)
def test_a_skipped_update_leaves_every_shadow_unchanged():
    cfg, model, sh, state, carry, step = _setup(None, ["nonfinite_loss=skip", *MULTI])
    poisoned = state.replace(
        params=jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.nan) if x.ndim == 2 else x, state.params)
    )
    before = jax.device_get(poisoned.ema_shadows)
    new_state, _, m = step(poisoned, carry, global_batch(next(_batches(1)), sh), np.float32(0.0))
    assert bool(m["skipped"])
    assert_trees_equal(jax.device_get(new_state.ema_shadows), before)


@pytest.mark.parametrize(
    "overrides",
    [["ema_rates=[0.99,0.99]"], ["ema_rates=[0.9999991,0.9999992]"], ["ema_rate=0.9990001", "ema_rates=[0.999]"]],
)
def test_rates_that_would_share_a_metric_name_are_refused(overrides):
    with pytest.raises(ConfigError, match="ema_rates"):
        validate(compose("quickstart", overrides))


def test_rates_outside_0_1_are_refused():
    with pytest.raises(ConfigError, match="ema_rates"):
        validate(compose("quickstart", ["ema_rates=[0.9,1.0]"]))


# End to end: train(cfg) in-process on the quick-start data.


def _cfg(data, run_dir, *overrides):
    return validate(compose("quickstart", [*TINY, f"data_paths=[{data}]", f"run_dir={run_dir}", *overrides]))


def _summary(run_dir) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data):
    """A multi-EMA run (primary EMA 0.9, shadow 0.99, raw) and the single runs it stands for."""
    root = tmp_path_factory.mktemp("multi_ema")
    settings = {
        "multi": ["ema=true", "ema_rate=0.9", *MULTI],
        "raw": ["ema=false"],
        "ema0.9": ["ema=true", "ema_rate=0.9"],
        "ema0.99": ["ema=true", "ema_rate=0.99"],
    }
    out = {}
    for name, overrides in settings.items():
        result = train(_cfg(data, root / name, "max_steps=4", *overrides))
        assert result.status == "completed", result.error
        out[name] = root / name
    return out


@pytest.mark.timeout(900)
def test_every_weighting_is_evaluated_under_its_own_name(runs):
    got = _summary(runs["multi"])["final_metrics"]
    # Evaluating the same weights with the same program gives the same numbers: each weighting's
    # metrics are the ones its own single run reports under eval/.
    for prefix, single in (("eval", "ema0.9"), ("eval_raw", "raw"), ("eval_ema0.99", "ema0.99")):
        want = _summary(runs[single])["final_metrics"]
        assert {k.replace("eval/", f"{prefix}/", 1): v for k, v in want.items()}.items() <= got.items(), prefix
    assert not any(k.startswith("eval_ema0.9/") for k in got)  # the primary rate is not evaluated twice
    lines = [json.loads(line) for line in (runs["multi"] / "metrics.jsonl").read_text().splitlines()]
    final = next(r for r in reversed(lines) if "eval/all/exact_accuracy" in r)
    assert {k for k in got if k.startswith("eval")} <= final.keys()


@pytest.mark.timeout(900)
def test_checkpoint_holds_every_shadow_and_a_resume_continues_them_exactly(runs, data, tmp_path):
    state, _, step = restore(str(runs["multi"] / "checkpoints"))
    assert step == 4
    for rate in RATES[1:]:
        single, _, _ = restore(str(runs[f"ema{rate:g}"] / "checkpoints"))
        assert_trees_equal(state["ema_shadows"][f"{rate:g}"], single["ema_params"])

    run_dir = tmp_path / "resumed"
    overrides = ["ema=true", "ema_rate=0.9", *MULTI]
    assert train(_cfg(data, run_dir, "max_steps=2", *overrides)).status == "completed"
    assert train(_cfg(data, run_dir, "max_steps=4", *overrides)).status == "completed"
    resumed, _, _ = restore(str(run_dir / "checkpoints"))
    assert_trees_equal(resumed, state)


# Multi-process: 2 processes of 1 device, stopped and resumed, against one uninterrupted process.
LAYOUT_RTOL = 1e-4  # only the reduction order over rows differs between layouts (float32)
SUBSET_RUN = ["global_batch_size=256", "epochs=100", "eval_interval=1", "eval_subset=40"]


def _evals(run_dir) -> dict[int, dict]:
    lines = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in lines if any(k.startswith("eval") for k in r)}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_processes_resumed_keep_every_shadow_and_the_subset(tmp_path, data, compile_cache):
    overrides = ["ema=true", "ema_rate=0.9", *MULTI, *SUBSET_RUN]
    want_dir = tmp_path / "one"
    assert train(_cfg(data, want_dir, "max_steps=13", *overrides)).status == "completed"

    run_dir, env = tmp_path / "two", run_env(compile_cache)
    for max_steps in (7, 13):  # the second launch resumes the first one's step 7
        args = train_args(data, run_dir, *overrides, f"max_steps={max_steps}")
        cmd = launcher_cmd(2, 1, args, tmp_path / f"logs{max_steps}", timeout=400)
        assert_ok(run(cmd, env, tmp_path / f"launcher{max_steps}.txt", timeout=420))
    assert "resumed from" in (tmp_path / "logs13" / "process_0.log").read_text()

    state, _, step = restore(str(run_dir / "checkpoints"))
    want, _, _ = restore(str(want_dir / "checkpoints"))
    assert step == 13 and sorted(state["ema_shadows"]) == ["0.99"]
    for key in ("params", "ema_params", "ema_shadows"):
        assert_trees_close(state[key], want[key], rtol=LAYOUT_RTOL, atol=1e-6)
    got, ref = _evals(run_dir), _evals(want_dir)
    assert sorted(got) == [3, 7, 9, 13]  # subset evaluations at 3 and 9 (after the resume), full at 7 and 13
    for at in (9, 13):
        assert got[at].keys() == ref[at].keys()
        for key, value in ref[at].items():
            if key.endswith("/count") or key.endswith("halt_step_hist"):
                assert got[at][key] == value, key  # the same examples on every layout
            elif key.startswith("eval"):
                assert got[at][key] == pytest.approx(value, rel=LAYOUT_RTOL, abs=1e-6), key
    assert {"eval_subset/all/count", "eval_subset_raw/all/count", "eval_subset_ema0.99/all/count"} <= got[9].keys()


@pytest.mark.timeout(600)
def test_load_checkpoint_starts_every_shadow_at_the_loaded_weights(runs, data, tmp_path):
    loaded, _, _ = restore(str(runs["raw"] / "checkpoints"))
    cfg = _cfg(
        data, tmp_path / "run", f"load_checkpoint={runs['raw'] / 'checkpoints'}", "ema=true", "ema_rate=0.9", *MULTI
    )
    s = setup(cfg)
    try:
        state = jax.device_get(s.m.state)
    finally:
        s.close()
    assert sorted(state.ema_shadows) == ["0.99"]
    for tree in (state.params, state.ema_params, state.ema_shadows["0.99"]):
        assert_trees_equal(tree, loaded["params"])
