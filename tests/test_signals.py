"""SIGTERM and SIGINT end a run within a bounded time even when its main thread is blocked (here: a
data loader that hangs), without harming the checkpoints already written."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.pretrain_runs import REPO, TIMEOUT_SCALE, run_env, train_args

# The child trains normally for 3 batches, then its loader hangs (as a stuck network read would).
CHILD = """
import sys, time
sys.path.insert(0, {repo!r})
from dataset import puzzle_dataset
real_next = puzzle_dataset.TrainSampler.next_batch
served = [0]
def next_batch(self):
    served[0] += 1
    if served[0] > 3:
        print("BLOCKED", flush=True)
        time.sleep(3600)
    return real_next(self)
puzzle_dataset.TrainSampler.next_batch = next_batch
from pretrain_jax import train
from training.config import compose, validate
result = train(validate(compose("quickstart", {args!r})))
sys.exit(result.exit_code)
"""


def _start(tmp_path, data, compile_cache) -> tuple[subprocess.Popen, Path]:
    run_dir = tmp_path / "run"
    args = train_args(data, run_dir, "checkpoint_every_steps=1", "stop_grace_seconds=3")
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(repo=str(REPO), args=args))
    log = open(tmp_path / "log.txt", "w+")
    proc = subprocess.Popen([sys.executable, str(script)], env=run_env(compile_cache), stdout=log, stderr=log)
    deadline = time.monotonic() + 120 * TIMEOUT_SCALE
    while "BLOCKED" not in (tmp_path / "log.txt").read_text():
        assert proc.poll() is None, (tmp_path / "log.txt").read_text()[-3000:]
        assert time.monotonic() < deadline, "the child never reached its hanging loader"
        time.sleep(0.2)
    time.sleep(1.0)  # let the asynchronous saves of steps 1-3 commit
    return proc, run_dir


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_ends_a_blocked_run_within_the_grace_period(tmp_path, data, compile_cache, sig, code):
    proc, run_dir = _start(tmp_path, data, compile_cache)
    before = _files(run_dir / "checkpoints")
    assert before, "steps 1-3 should have been saved"
    t0 = time.monotonic()
    proc.send_signal(sig)
    assert proc.wait(timeout=60 * TIMEOUT_SCALE) == code
    elapsed = time.monotonic() - t0
    out = (tmp_path / "log.txt").read_text()
    assert "no step boundary within 3 s" in out and "without a new checkpoint" in out, out[-2000:]
    assert elapsed < 3 + 30, elapsed
    assert _files(run_dir / "checkpoints") == before


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_second_signal_exits_at_once(tmp_path, data, compile_cache):
    proc, run_dir = _start(tmp_path, data, compile_cache)
    before = _files(run_dir / "checkpoints")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60 * TIMEOUT_SCALE) == 130
    assert "a second signal" in (tmp_path / "log.txt").read_text()
    assert _files(run_dir / "checkpoints") == before
