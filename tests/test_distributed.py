"""Processes of one job that disagree, or lose a peer, fail fast and clearly instead of hanging
or silently training different models."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from tests.pretrain_runs import TIMEOUT_SCALE, pretrain_cmd, run, run_env, start, tail, train_args, wait_for_step
from training.ports import free_port

HEARTBEAT_S = 10


def start_job(tmp_path, compile_cache, args_per_process: list[list[str]]) -> list[subprocess.Popen]:
    """One process per argument list, joined through the TRM_* variables (what launch_local
    does, except that each process may get different arguments)."""
    coordinator = f"127.0.0.1:{free_port()}"
    procs = []
    for i, args in enumerate(args_per_process):
        env = run_env(
            compile_cache,
            TRM_COORDINATOR_ADDRESS=coordinator,
            TRM_NUM_PROCESSES=str(len(args_per_process)),
            TRM_PROCESS_ID=str(i),
        )
        procs.append(start(pretrain_cmd(args), env, tmp_path / f"process_{i}.txt"))
    return procs


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_processes_with_different_configs_both_fail_naming_the_keys(tmp_path, data, compile_cache):
    args = train_args(data, tmp_path / "run")
    procs = start_job(tmp_path, compile_cache, [args, [*args, "lr=2e-3", "seed=1"]])
    try:
        codes = [p.wait(timeout=100) for p in procs]
    finally:
        stop(procs)
    for i, code in enumerate(codes):
        out = (tmp_path / f"process_{i}.txt").read_text()
        assert code != 0, f"process {i} exited 0:\n{tail(out)}"
        assert "processes disagree on the config" in out and "['config.lr', 'config.seed']" in out, tail(out)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("killed", [1, 0], ids=["peer", "coordinator"])
def test_survivor_of_a_killed_peer_exits_non_zero_in_bounded_time(tmp_path, data, compile_cache, killed):
    run_dir = tmp_path / "run"
    # Long enough that the job is still training when a process dies.
    args = train_args(data, run_dir, "max_steps=100000", f"distributed.heartbeat_timeout_seconds={HEARTBEAT_S}")
    procs = start_job(tmp_path, compile_cache, [args, args])
    try:
        wait_for_step(procs[0], run_dir, 2, timeout=120)
        os.killpg(procs[killed].pid, signal.SIGKILL)
        survivor = procs[1 - killed]
        try:
            code = survivor.wait(timeout=HEARTBEAT_S * 4)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the survivor still runs {HEARTBEAT_S * 4}s after its peer died")
    finally:
        stop(procs)
    assert code != 0, tail((tmp_path / f"process_{1 - killed}.txt").read_text())
    assert not (run_dir / "summary.json").exists()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_global_batch_not_divisible_by_device_count_is_refused(tmp_path, data, compile_cache):
    env = run_env(compile_cache, XLA_FLAGS="--xla_force_host_platform_device_count=3")
    proc = run(
        pretrain_cmd(train_args(data, tmp_path / "run", "global_batch_size=16")), env, tmp_path / "log.txt", timeout=50
    )
    assert proc.returncode != 0
    assert "cannot be split over 3 devices" in proc.output and "multiple of 3" in proc.output, tail(proc.output)


def start_with_ids(tmp_path, compile_cache, ids: list[int], num_processes: int, args: list[str]):
    coordinator = f"127.0.0.1:{free_port()}"
    procs = []
    for i, pid in enumerate(ids):
        env = run_env(
            compile_cache,
            TRM_COORDINATOR_ADDRESS=coordinator,
            TRM_NUM_PROCESSES=str(num_processes),
            TRM_PROCESS_ID=str(pid),
        )
        procs.append(start(pretrain_cmd(args), env, tmp_path / f"process_{i}.txt"))
    return procs


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("ids", [[0], [1], [0, 0]], ids=["peer-missing", "coordinator-missing", "duplicated-id"])
def test_a_missing_or_duplicated_peer_gets_the_project_hint_not_a_cpp_abort(tmp_path, data, compile_cache, ids):
    timeout_s = 3
    run_dir = tmp_path / "run"
    args = train_args(data, run_dir, f"distributed.initialization_timeout={timeout_s}")
    procs = start_with_ids(tmp_path, compile_cache, ids, 2, args)
    try:
        codes = [p.wait(timeout=90 * TIMEOUT_SCALE) for p in procs]
    finally:
        stop(procs)
    for i, code in enumerate(codes):
        out = (tmp_path / f"process_{i}.txt").read_text()
        assert code == 1, f"process {i} exited {code}:\n{tail(out)}"
        assert "did not meet all its peers at 127.0.0.1" in out, tail(out)
        assert f"within distributed.initialization_timeout={timeout_s}s" in out, tail(out)
        assert "two were started with the same process id" in out, tail(out)
        assert "Check failure" not in out and "Terminating process" not in out, tail(out)
    assert not run_dir.exists()


@pytest.mark.timeout(60)
def test_a_process_id_outside_the_job_is_refused_at_once(tmp_path, data, compile_cache):
    env = run_env(compile_cache, TRM_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}", TRM_NUM_PROCESSES="2")
    env["TRM_PROCESS_ID"] = "2"
    proc = run(pretrain_cmd(train_args(data, tmp_path / "run")), env, tmp_path / "log.txt", timeout=50)
    assert proc.returncode == 1, tail(proc.output)
    assert "process id 2 is outside 0..1 for a job of 2 processes" in proc.output, tail(proc.output)
    assert not (tmp_path / "run").exists()
