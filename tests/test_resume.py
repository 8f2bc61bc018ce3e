"""Scale and survive: a run that is killed, preempted or moved to gs:// and restarted with the
same command ends exactly where an uninterrupted run ends (CPU, float32: bitwise)."""

from __future__ import annotations

import os
import signal

import pytest

from tests.pretrain_runs import (
    assert_losses_close,
    assert_ok,
    assert_trees_close,
    assert_trees_equal,
    checkpoint_steps,
    child_pids,
    kill_tree,
    launcher_cmd,
    losses,
    pretrain_cmd,
    restore,
    run,
    run_env,
    start,
    train_args,
    wait_for_step,
)


def assert_same_run(run_dir, ckpt_dir, want_dir, want_ckpt_dir) -> None:
    """Final train state, ACT carry and per-step losses equal. A restarted run re-logs the steps
    after its checkpoint; `losses` keeps the last line of each step."""
    state, carry, step = restore(str(ckpt_dir))
    want_state, want_carry, want_step = restore(str(want_ckpt_dir))
    assert step == want_step
    assert_trees_equal(state, want_state)
    assert_trees_equal(carry, want_carry)
    assert losses(run_dir) == losses(want_dir)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sigkill_then_restart_ends_bitwise_equal(tmp_path, data, compile_cache, reference):
    run_dir, env = tmp_path / "run", run_env(compile_cache)
    cmd = pretrain_cmd(train_args(data, run_dir, "checkpoint_every_steps=1"))
    proc = start(cmd, env, tmp_path / "killed.txt")
    try:
        wait_for_step(proc, run_dir, 2, timeout=120)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (run_dir / "summary.json").exists(), "killed too late: the run had finished"
    killed_at = checkpoint_steps(str(run_dir / "checkpoints"))[-1]
    assert killed_at < reference["step"]

    proc = run(cmd, env, tmp_path / "restarted.txt", timeout=120)
    assert_ok(proc)
    assert f"resumed from {run_dir / 'checkpoints'} step {killed_at}" in proc.output
    assert_same_run(run_dir, run_dir / "checkpoints", reference["run_dir"], reference["ckpt_dir"])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_processes_killed_together_then_restarted_end_bitwise_equal(tmp_path, data, compile_cache, launched):
    want_dir = launched(2, 2)
    run_dir, env = tmp_path / "run", run_env(compile_cache)
    args = train_args(data, run_dir, "checkpoint_every_steps=1")
    proc = start(launcher_cmd(2, 2, args, tmp_path / "logs_killed", timeout=200), env, tmp_path / "killed.txt")
    try:
        wait_for_step(proc, run_dir, 2, timeout=150)
    finally:
        kill_tree(proc.pid)  # the launcher and both workers at once, like a lost machine
        proc.wait()
    assert not (run_dir / "summary.json").exists(), "killed too late: the run had finished"

    assert_ok(
        run(launcher_cmd(2, 2, args, tmp_path / "logs", timeout=200), env, tmp_path / "restarted.txt", timeout=220)
    )
    assert "resumed from" in (tmp_path / "logs" / "process_0.log").read_text()
    assert_same_run(run_dir, run_dir / "checkpoints", want_dir, want_dir / "checkpoints")


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "signum, periodic",
    [(signal.SIGTERM, []), (signal.SIGTERM, ["checkpoint_every_steps=1"]), (signal.SIGINT, [])],
    ids=["sigterm_final_save_only", "sigterm_also_periodic", "ctrl_c"],
)
def test_a_signal_saves_the_step_reached_and_exits_128_plus_signum(
    tmp_path, data, compile_cache, reference, signum, periodic
):
    run_dir, env = tmp_path / "run", run_env(compile_cache)
    cmd = pretrain_cmd(train_args(data, run_dir, *periodic))
    proc = start(cmd, env, tmp_path / "terminated.txt")
    try:
        wait_for_step(proc, run_dir, 2, timeout=120)
        os.killpg(proc.pid, signum)  # the whole process group, as Ctrl-C in a terminal does
        assert proc.wait(timeout=60) == 128 + signum, (tmp_path / "terminated.txt").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = (tmp_path / "terminated.txt").read_text()
    assert "Traceback" not in output and "rerun the same command to resume" in output, output[-3000:]
    reached = max(losses(run_dir))  # the loop logs every finished step before it saves and exits
    assert checkpoint_steps(str(run_dir / "checkpoints"))[-1] == reached
    if not periodic:
        assert checkpoint_steps(str(run_dir / "checkpoints")) == [reached]
    assert reached < reference["step"]
    assert not (run_dir / "summary.json").exists()

    proc = run(cmd, env, tmp_path / "restarted.txt", timeout=120)
    assert_ok(proc)
    assert f"step {reached}" in proc.output
    assert_same_run(run_dir, run_dir / "checkpoints", reference["run_dir"], reference["ckpt_dir"])


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_checkpoints_on_gcs_resume(tmp_path, data, compile_cache, reference, gcs_emulator):
    import gcsfs

    root = f"{gcs_emulator['bucket']}/{tmp_path.name}"
    run_dir, env = tmp_path / "run", run_env(compile_cache)
    half = reference["step"] // 2
    first = run(
        pretrain_cmd(train_args(data, run_dir, f"checkpoint_root=gs://{root}", f"max_steps={half}")),
        env,
        tmp_path / "first.txt",
        timeout=120,
    )
    assert_ok(first)
    ckpt_dir = f"gs://{root}/quickstart/sudoku4"  # <checkpoint_root>/<experiment_group>/<experiment_name>
    assert checkpoint_steps(ckpt_dir) == [half]
    # A fresh gcsfs instance: fsspec's shared instances cache directory listings.
    bucket = gcsfs.GCSFileSystem(skip_instance_cache=True)
    objects = bucket.find(f"{root}/quickstart/sudoku4/{half}")
    assert any("/state/" in o for o in objects) and any("/meta/" in o for o in objects), objects
    assert not (run_dir / "checkpoints").exists()

    second = run(
        pretrain_cmd(train_args(data, run_dir, f"checkpoint_root=gs://{root}")),
        env,
        tmp_path / "second.txt",
        timeout=120,
    )
    assert_ok(second)
    assert f"resumed from {ckpt_dir} step {half}" in second.output
    # Read the final checkpoint from a copy: this process already listed (and cached) the bucket.
    bucket = gcsfs.GCSFileSystem(skip_instance_cache=True)
    bucket.get(f"{root}/quickstart/sudoku4", str(tmp_path / "copy"), recursive=True)
    assert_same_run(run_dir, tmp_path / "copy", reference["run_dir"], reference["ckpt_dir"])


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigterm_to_every_process_stops_all_at_one_step_and_saves_it(tmp_path, data, compile_cache, launched):
    """A pod preemption notice reaches every worker; JAX's preemption sync point makes all
    processes stop after the same step, save it collectively and exit with 143."""
    want_dir = launched(2, 2)
    run_dir, env = tmp_path / "run", run_env(compile_cache)
    args = train_args(data, run_dir)
    proc = start(launcher_cmd(2, 2, args, tmp_path / "logs_term", timeout=200), env, tmp_path / "terminated.txt")
    try:
        wait_for_step(proc, run_dir, 2, timeout=150)
        workers = [p for p in child_pids(proc.pid) if p != proc.pid]
        assert len(workers) == 2
        for pid in workers:
            os.kill(pid, signal.SIGTERM)
        assert proc.wait(timeout=120) == 143
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
    logs = [(tmp_path / "logs_term" / f"process_{i}.log").read_text() for i in (0, 1)]
    synced = [int(log.split("Reached preemption sync point, step=")[1].split()[0]) for log in logs]
    assert synced[0] == synced[1] == checkpoint_steps(str(run_dir / "checkpoints"))[-1]
    assert not (run_dir / "summary.json").exists()

    assert_ok(
        run(launcher_cmd(2, 2, args, tmp_path / "logs", timeout=200), env, tmp_path / "restarted.txt", timeout=220)
    )
    assert_same_run(run_dir, run_dir / "checkpoints", want_dir, want_dir / "checkpoints")


def _layout_cmd(layout: tuple[int, int], args: list[str], log_dir) -> list[str]:
    processes, devices = layout
    if processes == 1 and devices == 1:
        return pretrain_cmd(args)
    return launcher_cmd(processes, devices, args, log_dir, timeout=200)


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("first, then", [((1, 1), (2, 1)), ((2, 1), (1, 1))], ids=["1->2", "2->1"])
def test_resume_on_another_process_count(tmp_path, data, compile_cache, reference, first, then):
    """Preempted at step 10 on one layout, resumed on another: the data order is a function of
    the global batch, so the run ends where the uninterrupted one does (up to reduction order)."""
    run_dir, env = tmp_path / "run", run_env(compile_cache)
    args = train_args(data, run_dir)
    assert_ok(run(_layout_cmd(first, [*args, "max_steps=10"], tmp_path / "logs_a"), env, tmp_path / "a.txt", 220))
    assert checkpoint_steps(str(run_dir / "checkpoints")) == [10]
    assert_ok(run(_layout_cmd(then, args, tmp_path / "logs_b"), env, tmp_path / "b.txt", timeout=220))
    output = (tmp_path / "b.txt").read_text() + "".join(p.read_text() for p in tmp_path.glob("logs_b/*.log"))
    assert f"resumed from {run_dir / 'checkpoints'} step 10" in output

    state, _, step = restore(str(run_dir / "checkpoints"))
    assert step == reference["step"]
    assert_trees_close(state["params"], reference["state"]["params"], rtol=1e-4, atol=1e-6)
    assert_losses_close(losses(run_dir), reference["losses"], 1e-4)
