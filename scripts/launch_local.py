"""Run a training script as N cooperating JAX processes on this machine's CPU.

    python scripts/launch_local.py --num-processes 2 --devices-per-process 2 -- smoke.enabled=true

Each process gets D virtual CPU devices and the TRM_* variables that `pretrain_jax.py` reads
to call `jax.distributed.initialize`, so a laptop exercises the same multi-host code path as a
TPU pod. Process 0 streams to stdout; every process also logs to <log-dir>/process_<i>.log.
The first failure (or the timeout) brings the whole group down: a multi-host job whose peer
died would otherwise hang in its next collective.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

from training.ports import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SCRIPT = REPO_ROOT / "pretrain_jax.py"
TIMEOUT_EXIT_CODE = 124
LOG_TAIL_LINES = 40


def _log(msg: str) -> None:
    print(f"[launch_local] {msg}", file=sys.stderr, flush=True)


def process_env(
    base: dict[str, str], *, coordinator: str, num_processes: int, process_id: int, devices_per_process: int
) -> dict[str, str]:
    env = dict(base)
    xla_flags = f"{base.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices_per_process}"
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=xla_flags.strip(),
        TRM_COORDINATOR_ADDRESS=coordinator,
        TRM_NUM_PROCESSES=str(num_processes),
        TRM_PROCESS_ID=str(process_id),
        # Live streaming: a block-buffered child would show nothing until it exits.
        PYTHONUNBUFFERED="1",
    )
    return env


def _tee(pipe, log_file) -> None:
    for line in iter(pipe.readline, b""):
        log_file.write(line)
        log_file.flush()
        sys.stdout.write(line.decode(errors="replace"))
        sys.stdout.flush()
    pipe.close()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _stop_all(procs: list[subprocess.Popen], grace: float) -> None:
    """SIGTERM every live process group, then SIGKILL whatever outlives the grace period."""
    live = [p for p in procs if p.poll() is None]
    for p in live:
        _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in live:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(p, signal.SIGKILL)
            p.wait()


def _exit_code(returncode: int) -> int:
    # Popen reports death by signal N as -N; shells report it as 128 + N.
    return 128 - returncode if returncode < 0 else returncode


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    with open(path, errors="replace") as f:
        return "".join(deque(f, maxlen=lines))


def launch(
    num_processes: int,
    args: list[str],
    *,
    devices_per_process: int = 1,
    timeout: float | None = None,
    log_dir: str | os.PathLike | None = None,
    script: str | os.PathLike = DEFAULT_SCRIPT,
    grace: float = 5.0,
) -> int:
    """Run `python script *args` as `num_processes` JAX processes; return the group's exit code.

    0 if every process exits 0; otherwise the first failing process's code, or 124 on timeout.
    """
    if num_processes < 1 or devices_per_process < 1:
        raise ValueError("num_processes and devices_per_process must be >= 1")
    log_path = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="trm-launch-"))
    log_path.mkdir(parents=True, exist_ok=True)
    coordinator = f"127.0.0.1:{free_port()}"
    _log(
        f"{num_processes} processes x {devices_per_process} CPU devices, coordinator {coordinator}, logs in {log_path}"
    )

    procs: list[subprocess.Popen] = []
    logs = [log_path / f"process_{i}.log" for i in range(num_processes)]
    files = [open(p, "wb") for p in logs]
    tee = None
    try:
        for i in range(num_processes):
            env = process_env(
                os.environ,
                coordinator=coordinator,
                num_processes=num_processes,
                process_id=i,
                devices_per_process=devices_per_process,
            )
            proc = subprocess.Popen(
                [sys.executable, str(script), *args],
                env=env,
                stdout=subprocess.PIPE if i == 0 else files[i],
                stderr=subprocess.STDOUT,
                # Own process group per child, so stopping it also stops anything it spawned.
                start_new_session=True,
            )
            procs.append(proc)
            if i == 0:
                tee = threading.Thread(target=_tee, args=(proc.stdout, files[0]), daemon=True)
                tee.start()
        failed = _wait_for_first_failure(procs, timeout)
    finally:
        _stop_all(procs, grace)
        if tee is not None:
            tee.join(timeout=grace)
        for f in files:
            f.close()

    if failed is None:
        return 0
    if failed == _TIMED_OUT:
        _log(f"timeout after {timeout:g}s; stopped all processes")
        return TIMEOUT_EXIT_CODE
    code = _exit_code(procs[failed].returncode)
    _log(
        f"process {failed} exited with code {code}; stopped the others. "
        f"Last lines of {logs[failed]}:\n{_tail(logs[failed])}"
    )
    return code


_TIMED_OUT = -1


def _wait_for_first_failure(procs: list[subprocess.Popen], timeout: float | None) -> int | None:
    """Index of the first process to exit non-zero, None if all succeed, _TIMED_OUT on timeout."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        codes = [p.poll() for p in procs]
        failed = next((i for i, c in enumerate(codes) if c not in (None, 0)), None)
        if failed is not None:
            return failed
        if all(c == 0 for c in codes):
            return None
        if deadline is not None and time.monotonic() > deadline:
            return _TIMED_OUT
        time.sleep(0.1)


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {value})")
    return value


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Split at the first `--`: launcher options before it, the script's arguments after."""
    if "--" in argv:
        split = argv.index("--")
        own, script_args = argv[:split], argv[split + 1 :]
    else:
        own, script_args = argv, []
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-processes", type=_at_least_one, required=True)
    parser.add_argument("--devices-per-process", type=_at_least_one, default=1)
    parser.add_argument("--timeout", type=float, default=None, help="seconds for the whole run")
    parser.add_argument("--log-dir", default=None, help="default: a fresh temporary directory")
    parser.add_argument("--script", default=str(DEFAULT_SCRIPT))
    return parser.parse_args(own), script_args


def main(argv: list[str] | None = None) -> int:
    opts, script_args = parse_args(sys.argv[1:] if argv is None else argv)

    # A SIGTERM to the launcher must still run launch()'s cleanup, or the children leak.
    def _on_sigterm(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _on_sigterm)
    return launch(
        opts.num_processes,
        script_args,
        devices_per_process=opts.devices_per_process,
        timeout=opts.timeout,
        log_dir=opts.log_dir,
        script=opts.script,
    )


if __name__ == "__main__":
    sys.exit(main())
