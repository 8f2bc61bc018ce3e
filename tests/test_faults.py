"""Runs that go wrong say so clearly: non-finite losses, invalid configuration, missing data."""

from __future__ import annotations

import math
import re

import pytest

from tests.pretrain_runs import (
    all_finite,
    assert_ok,
    assert_trees_equal,
    checkpoint_steps,
    pretrain_cmd,
    restore,
    run,
    run_env,
    tail,
    train_args,
    train_rows,
)

# A learning rate this large makes the first update blow the weights up to ~1e28, so the next
# forward pass overflows float32: the loss is non-finite from the second step on.
EXPLODE = ["lr=1e30", "lr_warmup_steps=1", "checkpoint_every_steps=1"]


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, data, compile_cache):
    run_dir = tmp_path / "run"
    proc = run(
        pretrain_cmd(train_args(data, run_dir, *EXPLODE)), run_env(compile_cache), tmp_path / "log.txt", timeout=140
    )
    assert proc.returncode != 0
    found = re.search(r"error: non-finite loss at step (\d+)", proc.output)
    assert found, tail(proc.output)
    bad = int(found.group(1))
    assert "Traceback" not in proc.output.split(found.group(0))[-1], "noise after the error: " + tail(proc.output)
    # Every step before the bad one was logged with a finite loss; the bad one was not logged.
    assert [r["step"] for r in train_rows(run_dir)] == list(range(1, bad))
    assert all(math.isfinite(r["train/lm_loss"]) for r in train_rows(run_dir))

    ckpt_dir = str(run_dir / "checkpoints")
    assert not list((run_dir / "checkpoints").glob("*tmp*")), "a torn save was left behind"
    steps = checkpoint_steps(ckpt_dir)
    assert steps[-1] == bad
    state, _, _ = restore(ckpt_dir)
    assert all_finite(state)
    # The bad step's update was not applied: its checkpoint holds the previous step's weights.
    before, _, _ = restore(ckpt_dir, bad - 1)
    assert_trees_equal(state["params"], before["params"])
    assert not (run_dir / "summary.json").exists()


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_an_update_that_would_make_the_weights_inf_stops_and_no_checkpoint_holds_them(tmp_path, data, compile_cache):
    run_dir = tmp_path / "run"
    overflow = ["lr=3e38", "lr_warmup_steps=1", "checkpoint_every_steps=1"]
    proc = run(
        pretrain_cmd(train_args(data, run_dir, *overflow)), run_env(compile_cache), tmp_path / "log.txt", timeout=140
    )
    assert proc.returncode == 1, tail(proc.output)
    errors = [line for line in proc.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "would make the weights non-finite (lr=3e+38)" in errors[0], tail(proc.output)
    ckpt_dir = str(run_dir / "checkpoints")
    steps = checkpoint_steps(ckpt_dir)
    assert steps and f"the last good checkpoint is step {steps[-1]}" in errors[0], tail(proc.output)
    for step in steps:
        assert all_finite(restore(ckpt_dir, step)[0])
    assert not (run_dir / "summary.json").exists()


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_non_finite_loss_skip_continues_and_counts_skipped_steps(tmp_path, data, compile_cache):
    run_dir = tmp_path / "run"
    proc = run(
        pretrain_cmd(train_args(data, run_dir, *EXPLODE, "nonfinite_loss=skip")),
        run_env(compile_cache),
        tmp_path / "log.txt",
        timeout=140,
    )
    assert_ok(proc)
    rows = train_rows(run_dir)
    assert (run_dir / "summary.json").exists()
    skipped = [r["step"] for r in rows if r["train/skipped"]]
    assert skipped, "no step was skipped"
    assert all(r["train/skipped"] for r in rows if not math.isfinite(r["train/lm_loss"]))

    ckpt_dir = str(run_dir / "checkpoints")
    final, _, last = restore(ckpt_dir)
    assert last == rows[-1]["step"]
    assert all_finite(final)
    for step in skipped:  # a skipped step leaves the weights as they were
        after, _, _ = restore(ckpt_dir, step)
        before, _, _ = restore(ckpt_dir, step - 1)
        assert_trees_equal(after["params"], before["params"])


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_unknown_key_and_wrong_type_are_named(tmp_path, data, compile_cache):
    proc = run(
        pretrain_cmd(train_args(data, tmp_path / "run", "+arch.hidden_sise=32", "global_batch_size=sixteen")),
        run_env(compile_cache),
        tmp_path / "log.txt",
        timeout=50,
    )
    assert proc.returncode != 0
    assert "arch.hidden_sise: unknown key" in proc.output, tail(proc.output)
    assert re.search(r"global_batch_size: .*integer.*'sixteen'", proc.output), tail(proc.output)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_missing_dataset_names_the_path_and_how_to_build_it(tmp_path, compile_cache):
    missing = tmp_path / "no-such-dataset"
    proc = run(
        pretrain_cmd(train_args(str(missing), tmp_path / "run", "data_generator=null")),
        run_env(compile_cache),
        tmp_path / "log.txt",
        timeout=50,
    )
    assert proc.returncode != 0
    assert str(missing) in proc.output and "build the dataset" in proc.output, tail(proc.output)
