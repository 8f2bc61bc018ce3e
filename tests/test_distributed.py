"""Processes of one job that disagree, or lose a peer, fail fast and clearly instead of hanging
or silently training different models."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

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


def _start(tmp_path, compile_cache, coordinator: str, process_id: int, args: list[str], log: str):
    env = run_env(compile_cache, TRM_COORDINATOR_ADDRESS=coordinator, TRM_NUM_PROCESSES="2")
    env["TRM_PROCESS_ID"] = str(process_id)
    return start(pretrain_cmd(args), env, tmp_path / log)


def _assert_hint(tmp_path, log: str, code: int, timeout_s: int) -> None:
    out = (tmp_path / log).read_text()
    assert code == 1, f"{log}: exit code {code}:\n{tail(out)}"
    assert "did not meet all its peers at 127.0.0.1" in out, tail(out)
    assert f"within distributed.initialization_timeout={timeout_s}s" in out, tail(out)
    assert "two were started with the same process id" in out, tail(out)
    assert "Check failure" not in out and "Terminating process" not in out, tail(out)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("process_id", [0, 1], ids=["peer-missing", "coordinator-missing"])
def test_a_missing_peer_gets_the_project_hint_not_a_cpp_abort(tmp_path, data, compile_cache, process_id):
    timeout_s = 3
    args = train_args(data, tmp_path / "run", f"distributed.initialization_timeout={timeout_s}")
    proc = _start(tmp_path, compile_cache, f"127.0.0.1:{free_port()}", process_id, args, "alone.txt")
    try:
        code = proc.wait(timeout=90 * TIMEOUT_SCALE)
    finally:
        stop([proc])
    _assert_hint(tmp_path, "alone.txt", code, timeout_s)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_second_process_0_is_refused_before_it_disturbs_the_first(tmp_path, data, compile_cache):
    timeout_s = 3 * int(TIMEOUT_SCALE)
    port = free_port()
    args = train_args(data, tmp_path / "run", f"distributed.initialization_timeout={timeout_s}")
    first = _start(tmp_path, compile_cache, f"127.0.0.1:{port}", 0, args, "first.txt")
    try:
        deadline = time.monotonic() + 60 * TIMEOUT_SCALE
        while not _listening(port):  # the first one serves the coordinator
            assert first.poll() is None and time.monotonic() < deadline, tail((tmp_path / "first.txt").read_text())
            time.sleep(0.2)
        second = _start(tmp_path, compile_cache, f"127.0.0.1:{port}", 0, args, "second.txt")
        codes = [p.wait(timeout=90 * TIMEOUT_SCALE) for p in (second, first)]
    finally:
        stop([first])
    out = (tmp_path / "second.txt").read_text()
    assert codes[0] == 1 and f"process 0 cannot serve the coordinator at 127.0.0.1:{port}" in out, tail(out)
    assert "Another process 0 (of this job or an earlier one) may still run" in out
    _assert_hint(tmp_path, "first.txt", codes[1], timeout_s)  # it waited for its peer, undisturbed


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.timeout(60)
def test_a_process_id_outside_the_job_is_refused_at_once(tmp_path, data, compile_cache):
    env = run_env(compile_cache, TRM_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}", TRM_NUM_PROCESSES="2")
    env["TRM_PROCESS_ID"] = "2"
    proc = run(pretrain_cmd(train_args(data, tmp_path / "run")), env, tmp_path / "log.txt", timeout=50)
    assert proc.returncode == 1, tail(proc.output)
    assert "process id 2 is outside 0..1 for a job of 2 processes" in proc.output, tail(proc.output)
    assert not (tmp_path / "run").exists()
