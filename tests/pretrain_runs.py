"""Helpers for the end-to-end tests that run `pretrain_jax.py` as real subprocesses.

Every run is a tiny quickstart model on generated 4x4 Sudoku. What dominates a run on CPU is
XLA compilation, so all runs of a pytest session share one JAX persistent compilation cache:
runs with the same program and device layout compile once. Compilation is deterministic, so
the cache changes no number, only the wall time.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
# Every wait of ours (subprocess, launcher, "step N appeared", pytest-timeout) is multiplied by this:
# the fixed seconds suit a quiet 2-core machine, and a shared one can be several times slower.
TIMEOUT_SCALE = float(os.environ.get("TRM_TEST_TIMEOUT_SCALE", "3"))
LAUNCHER = REPO / "scripts" / "launch_local.py"

# Small enough to compile in seconds, big enough to exercise the ACT carry across steps
# (halt_max_steps > 1), halting exploration (the RNG in the state) and the puzzle embedding.
# 20 steps: long enough that a signal sent after step 2 lands before the run ends, while
# compilation, not the steps, still dominates the time.
TINY = [
    "arch.hidden_size=32",
    "arch.num_heads=2",
    "arch.L_layers=1",
    "arch.H_cycles=1",
    "arch.L_cycles=2",
    "arch.halt_max_steps=2",
    "global_batch_size=16",
    "max_steps=20",
    "log_every_steps=1",
    "max_to_keep=30",
]


def run_env(compile_cache: str, **extra: str) -> dict[str, str]:
    """The test process's environment (which carries conftest's loopback-only GCS settings)
    plus CPU JAX and the shared compilation cache."""
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=compile_cache,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def train_args(data: str, run_dir: Path | str, *overrides: str) -> list[str]:
    return [*TINY, f"data_paths=[{data}]", f"run_dir={run_dir}", *overrides]


def pretrain_cmd(args: list[str]) -> list[str]:
    return [sys.executable, str(REPO / "pretrain_jax.py"), *args]


def launcher_cmd(
    num_processes: int, devices_per_process: int, args: list[str], log_dir: Path, timeout: float
) -> list[str]:
    return [
        sys.executable,
        str(LAUNCHER),
        "--num-processes",
        str(num_processes),
        "--devices-per-process",
        str(devices_per_process),
        "--timeout",
        str(timeout * TIMEOUT_SCALE),
        "--log-dir",
        str(log_dir),
        "--",
        *args,
    ]


def run(cmd: list[str], env: dict[str, str], log: Path, timeout: float) -> subprocess.CompletedProcess:
    """Run to completion; stdout and stderr go to `log` (a pipe nobody reads could fill up)."""
    with open(log, "wb") as out:
        proc = subprocess.run(
            cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout * TIMEOUT_SCALE
        )
    proc.output = log.read_text(errors="replace")
    return proc


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start in its own session so the test can signal it (and only it) by its process group."""
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def tail(text: str, n: int = 40) -> str:
    return "\n".join(text.splitlines()[-n:])


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit code {proc.returncode}:\n{tail(proc.output)}"


def train_rows(run_dir: Path | str) -> list[dict]:
    """The training lines of metrics.jsonl (evaluation lines carry no train/lm_loss)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.endswith("}"):  # the writer may be killed mid-line
            row = json.loads(line)
            if "train/lm_loss" in row:
                rows.append(row)
    return rows


def losses(run_dir: Path | str) -> dict[int, float]:
    return {r["step"]: r["train/lm_loss"] for r in train_rows(run_dir)}


def eval_row(run_dir: Path | str) -> dict:
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return next(r for r in reversed(rows) if any(k.startswith("eval/") for k in r))


def wait_for_step(proc: subprocess.Popen, run_dir: Path | str, step: int, timeout: float) -> int:
    """Poll metrics.jsonl until a training line at or past `step` appears; returns that step."""
    deadline = time.monotonic() + timeout * TIMEOUT_SCALE
    while time.monotonic() < deadline:
        done = max(losses(run_dir), default=0)
        if done >= step:
            return done
        assert proc.poll() is None, f"the run exited with {proc.returncode} before step {step}"
        time.sleep(0.05)
    raise AssertionError(f"no step {step} in {run_dir}/metrics.jsonl within {timeout}s")


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid` (Linux /proc)."""
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(p) for p in (task / "children").read_text().split()]
    return kids


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal `pid` and its direct children; launch_local puts each worker in its own session,
    so signalling the launcher's group alone would leave the workers running."""
    for p in [pid, *child_pids(pid)]:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def checkpoint_steps(ckpt_dir: str) -> list[int]:
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(ckpt_dir, item_names=("state", "meta")) as manager:
        return sorted(manager.all_steps())


def restore(ckpt_dir: str, step: int | None = None) -> tuple[dict, dict, int]:
    """(state, carry, step) of a checkpoint as numpy trees, `step` or the newest."""
    import jax
    import orbax.checkpoint as ocp

    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    with ocp.CheckpointManager(ckpt_dir, item_handlers=handlers) as manager:
        step = manager.latest_step() if step is None else step
        # Onto this process's one device, whatever layout wrote the checkpoint.
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        saved = manager.item_metadata(step)["state"]
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved)
        item = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
    item = jax.tree.map(np.asarray, item)
    return item["state"], item["carry"], step


def assert_trees_equal(a, b) -> None:
    """Bitwise equal: same structure, dtypes and bytes."""
    import jax

    la, ta = jax.tree.flatten_with_path(a)
    lb, tb = jax.tree.flatten_with_path(b)
    assert ta == tb
    for (path, x), (_, y) in zip(la, lb, strict=False):
        assert x.dtype == y.dtype and x.shape == y.shape, jax.tree_util.keystr(path)
        assert x.tobytes() == y.tobytes(), f"{jax.tree_util.keystr(path)} differs"


def assert_trees_close(a, b, rtol: float, atol: float) -> None:
    import jax

    la, ta = jax.tree.flatten_with_path(a)
    lb, tb = jax.tree.flatten_with_path(b)
    assert ta == tb
    for (path, x), (_, y) in zip(la, lb, strict=False):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


def all_finite(tree) -> bool:
    import jax

    return all(np.isfinite(x).all() for x in jax.tree.leaves(tree) if np.issubdtype(x.dtype, np.floating))


def assert_losses_close(got: dict[int, float], want: dict[int, float], rtol: float) -> None:
    assert sorted(got) == sorted(want), (sorted(got), sorted(want))
    for step in want:
        assert math.isclose(got[step], want[step], rel_tol=rtol), f"step {step}: {got[step]} vs {want[step]}"
