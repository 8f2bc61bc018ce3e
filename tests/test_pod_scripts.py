"""scripts/tpu/*.sh and scripts/slurm/train.sbatch: dry-run output, shellcheck, and a run
against a fake `gcloud` that treats a temporary directory as the only worker."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TPU = REPO / "scripts" / "tpu"
SBATCH = REPO / "scripts" / "slurm" / "train.sbatch"
SSH = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-pod", "--worker=all", "--zone=z1", "--project=p1"]


def _bin_with(tmp_path: Path, name: str, body: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    tool = bin_dir / name
    tool.write_text(textwrap.dedent(body))
    tool.chmod(0o755)
    return bin_dir


def _run(script: str, *args: str, bin_dir: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "TPU_NAME": "my-pod",
        "ZONE": "z1",
        "PROJECT": "p1",
        **(env or {}),
    }
    return subprocess.run(["bash", str(TPU / script), *args], env=full_env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def dry_run(tmp_path):
    """Runs a script with --dry-run; a real gcloud call would fail the test."""
    bin_dir = _bin_with(tmp_path, "gcloud", "#!/bin/sh\necho 'gcloud must not run in --dry-run' >&2\nexit 99\n")

    def run(script: str, *args: str, **env: str) -> list[list[str]]:
        result = _run(script, "--dry-run", *args, bin_dir=bin_dir, env=env)
        assert result.returncode == 0, result.stderr
        return [shlex.split(line) for line in result.stdout.splitlines()]

    return run


def _remote(argv: list[str]) -> str:
    assert argv[:-1] == SSH, argv
    assert argv[-1].startswith("--command=")
    return argv[-1].removeprefix("--command=")


def test_setup_installs_tpu_requirements_into_a_venv(dry_run):
    [argv] = dry_run("setup.sh")
    remote = _remote(argv)
    assert "cd trm-jax && uv venv --allow-existing --python 3.11 .venv" in remote
    assert remote.endswith("uv pip install --python .venv/bin/python -r requirements-tpu.txt -e .")


def test_sync_code_archives_without_venv_runs_data_and_extracts_on_all_workers(dry_run):
    tar, scp, ssh = dry_run("sync_code.sh")
    assert tar[:2] == ["tar", "-czf"] and tar[3:5] == ["-C", str(REPO)]
    for excluded in (".git", ".venv", "runs", "data"):
        assert f"--exclude=./{excluded}" in tar
    assert scp == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "scp",
        tar[2],
        "my-pod:trm-jax-code.tar.gz",
        "--worker=all",
        "--zone=z1",
        "--project=p1",
    ]
    assert _remote(ssh) == "mkdir -p trm-jax && tar -xzf trm-jax-code.tar.gz -C trm-jax && rm trm-jax-code.tar.gz"


def test_prepare_data_runs_a_builder_or_copies_from_gcs(dry_run):
    [argv] = dry_run("prepare_data.sh", "--", "dataset/build_sudoku_dataset.py", "--output-dir", "data/s 1")
    assert _remote(argv) == "cd trm-jax && .venv/bin/python dataset/build_sudoku_dataset.py --output-dir 'data/s 1'"
    [argv] = dry_run("prepare_data.sh", "--from-gcs", "gs://bkt/datasets/sudoku/")
    assert (
        _remote(argv)
        == "cd trm-jax && mkdir -p data && gcloud storage rsync --recursive gs://bkt/datasets/sudoku data/sudoku"
    )


def test_launch_runs_preflight_then_starts_pretrain_detached_with_a_log_per_worker(dry_run):
    [argv] = dry_run("launch.sh", "cfg_pretrain", "data_paths=[gs://b/d]", "lr=1e-4")
    remote = _remote(argv)
    words = shlex.split(remote)
    config = ["--config-name", "cfg_pretrain", "data_paths=[gs://b/d]", "lr=1e-4"]
    check = words.index("scripts/preflight.py")
    assert words[check - 1 : check + 7] == [
        ".venv/bin/python",
        "scripts/preflight.py",
        "--expect-platform",
        "tpu",
        *config,
    ]
    start = words.index("nohup")
    assert check < start
    assert words[start : start + 7] == ["nohup", ".venv/bin/python", "pretrain_jax.py", *config]
    assert "> logs/cfg_pretrain.log 2>&1 < /dev/null & echo $! > logs/cfg_pretrain.pid" in remote
    # Training starts only if the pre-flight check passed on this worker.
    assert '|| { echo "$(hostname): preflight failed; cfg_pretrain not started" >&2; exit 1; }; } && {' in remote


def test_launch_can_skip_the_preflight_check(dry_run):
    [argv] = dry_run("launch.sh", "--skip-preflight", "quickstart", "lr=1e-3")
    remote = _remote(argv)
    assert "preflight" not in remote
    words = shlex.split(remote)
    start = words.index("nohup")
    assert words[start + 2 : start + 6] == ["pretrain_jax.py", "--config-name", "quickstart", "lr=1e-3"]


def test_tail_logs_and_stop(dry_run):
    [argv] = dry_run("tail_logs.sh", "--follow", "quickstart")
    assert _remote(argv).endswith("tail -n 50 -F logs/quickstart.log")
    [argv] = dry_run("stop.sh")
    assert "for f in logs/*.pid" in _remote(argv)


def test_flags_override_the_environment(dry_run):
    [argv] = dry_run("stop.sh", "--tpu", "other", "--zone", "z2", "--project", "p2", "--worker", "3")
    assert argv[:9] == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "ssh",
        "other",
        "--worker=3",
        "--zone=z2",
        "--project=p2",
    ]


def test_zone_and_project_fall_back_to_gcloud_config(dry_run):
    [argv] = dry_run("stop.sh", ZONE="", PROJECT="")
    assert argv[5:7] == ["my-pod", "--worker=all"] and argv[7].startswith("--command=")


@pytest.mark.parametrize(
    "args, message",
    [
        ((), "no TPU name"),
        (("--tpu", "x", "--bogus"), "unexpected arguments: --bogus"),
        (("--tpu",), "--tpu needs a value"),
    ],
)
def test_bad_invocations_fail_with_a_message(tmp_path, args, message):
    result = _run("stop.sh", *args, bin_dir=tmp_path, env={"TPU_NAME": ""})
    assert result.returncode == 2 and message in result.stderr


def _shellcheck() -> str:
    found = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    if not found:
        pytest.skip("shellcheck not installed: pip install -r requirements-dev.txt")
    return found


@pytest.mark.parametrize("script", sorted(TPU.glob("*.sh")) + [SBATCH], ids=lambda p: p.name)
def test_shellcheck_passes(script):
    result = subprocess.run(
        [_shellcheck(), "-x", "--source-path=SCRIPTDIR", str(script)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout


# Plays one worker: runs --command in $FAKE_HOME, and scp copies into it.
FAKE_GCLOUD = """\
#!/usr/bin/env bash
set -euo pipefail
cd "$FAKE_HOME"
case "$4" in
  ssh) for a in "$@"; do [[ "$a" == --command=* ]] && exec bash -c "${a#--command=}"; done ;;
  scp) cp "$5" "${6#*:}" ;;
esac
"""

# Stands in for the venv's python on the worker: the pre-flight check records its arguments and
# exits with $FAKE_PREFLIGHT_EXIT; training records its arguments, then trains forever.
FAKE_PYTHON = """\
#!/usr/bin/env bash
if [[ "$1" == scripts/preflight.py ]]; then
  echo "python $*" >> preflight.txt
  exit "${FAKE_PREFLIGHT_EXIT:-0}"
fi
echo "python $*"
exec sleep 120
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sync_launch_tail_stop_on_a_fake_worker(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    bin_dir = _bin_with(tmp_path, "gcloud", FAKE_GCLOUD)
    env = {"FAKE_HOME": str(home)}

    assert _run("sync_code.sh", bin_dir=bin_dir, env=env).returncode == 0
    checkout = home / "trm-jax"
    assert (checkout / "scripts" / "tpu" / "launch.sh").is_file()
    assert (checkout / "dataset" / "__init__.py").is_file()  # not caught by --exclude=./data
    assert not (checkout / ".venv").exists() and not (checkout / ".git").exists()
    assert not (home / "trm-jax-code.tar.gz").exists()

    venv_python = checkout / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text(FAKE_PYTHON)
    venv_python.chmod(0o755)
    failing = _run("launch.sh", "quickstart", bin_dir=bin_dir, env={**env, "FAKE_PREFLIGHT_EXIT": "1"})
    assert failing.returncode == 1 and "preflight failed; quickstart not started" in failing.stderr
    assert not (checkout / "logs" / "quickstart.pid").exists() and not (checkout / "logs" / "quickstart.log").exists()

    launched = _run("launch.sh", "quickstart", "lr=1e-3", "run_dir=runs/a b", bin_dir=bin_dir, env=env)
    assert launched.returncode == 0, launched.stderr
    assert (checkout / "preflight.txt").read_text().splitlines()[-1] == (
        "python scripts/preflight.py --expect-platform tpu --config-name quickstart lr=1e-3 run_dir=runs/a b"
    )
    pid = int((checkout / "logs" / "quickstart.pid").read_text())
    try:
        log = checkout / "logs" / "quickstart.log"
        deadline = time.monotonic() + 10
        while "python" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert log.read_text().strip() == "python pretrain_jax.py --config-name quickstart lr=1e-3 run_dir=runs/a b"

        again = _run("launch.sh", "quickstart", bin_dir=bin_dir, env=env)
        assert again.returncode != 0 and "quickstart is already running" in again.stderr

        tail = _run("tail_logs.sh", bin_dir=bin_dir, env=env)
        assert "python pretrain_jax.py --config-name quickstart" in tail.stdout

        stopped = _run("stop.sh", bin_dir=bin_dir, env=env)
        assert stopped.returncode == 0 and "stopped logs/quickstart" in stopped.stdout
        assert not (checkout / "logs" / "quickstart.pid").exists()
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    finally:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def test_sbatch_runs_pretrain_under_srun(tmp_path):
    bin_dir = _bin_with(tmp_path, "srun", '#!/bin/sh\nprintf "%s\\n" "$@"\n')
    result = subprocess.run(
        ["bash", str(SBATCH), "quickstart", "global_batch_size=768"],
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_SUBMIT_DIR": str(REPO)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "--kill-on-bad-exit=1",
        ".venv/bin/python",
        "pretrain_jax.py",
        "--config-name",
        "quickstart",
        "global_batch_size=768",
    ]
