"""Restarting on a damaged or foreign checkpoint directory: fall back past a broken newest step,
refuse a checkpoint of another architecture."""

from __future__ import annotations

import shutil

import pytest

from tests.pretrain_runs import (
    assert_ok,
    assert_trees_equal,
    checkpoint_steps,
    losses,
    pretrain_cmd,
    restore,
    run,
    run_env,
    tail,
    train_args,
)


def damage(step_dir, how: str) -> None:
    """Damage the array data of a committed step (the files under state/**/d/)."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files, f"no array data files under {step_dir}"
    for p in files:
        if how == "truncate":
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        else:
            p.unlink()


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["truncate", "delete"])
def test_broken_newest_step_falls_back_to_the_previous_one(tmp_path, data, compile_cache, reference, how):
    run_dir = tmp_path / "run"
    shutil.copytree(reference["run_dir"], run_dir)
    ckpt_dir = run_dir / "checkpoints"
    steps = checkpoint_steps(str(ckpt_dir))
    newest, previous = steps[-1], steps[-2]
    damage(ckpt_dir / str(newest), how)

    proc = run(
        pretrain_cmd(train_args(data, run_dir, "checkpoint_every_steps=2")),
        run_env(compile_cache),
        tmp_path / "log.txt",
        timeout=100,
    )
    assert_ok(proc)
    assert f"checkpoint step {newest} in {ckpt_dir} is unreadable" in proc.output, tail(proc.output)
    assert f"resumed from {ckpt_dir} step {previous}" in proc.output
    # Retraining from the previous step reproduces the lost one exactly, and replaces it.
    state, carry, step = restore(str(ckpt_dir))
    assert step == newest
    assert_trees_equal(state, reference["state"])
    assert_trees_equal(carry, reference["carry"])
    assert losses(run_dir) == reference["losses"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_checkpoint_of_another_architecture_is_refused(tmp_path, data, compile_cache, reference):
    run_dir = tmp_path / "run"
    shutil.copytree(reference["run_dir"], run_dir)
    steps = checkpoint_steps(str(run_dir / "checkpoints"))

    proc = run(
        pretrain_cmd(train_args(data, run_dir, "arch.hidden_size=64")),
        run_env(compile_cache),
        tmp_path / "log.txt",
        timeout=100,
    )
    assert proc.returncode != 0
    assert "different architecture" in proc.output and "'hidden_size': (32, 64)" in proc.output, tail(proc.output)
    assert "num_heads" not in proc.output.split("different architecture")[1].split("\n")[0]
    assert checkpoint_steps(str(run_dir / "checkpoints")) == steps
