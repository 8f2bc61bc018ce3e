"""scripts/preflight.py: one line per readiness check, non-zero exit on any failure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import fsspec
import jax
import numpy as np
import pytest

from dataset.smoke import build_smoke_dataset
from models.act import initial_carry
from models.trm import ModelDims, build_model
from scripts import preflight
from tests.pretrain_runs import REPO, run_env
from tests.test_export_official import _state
from training.checkpointing import Checkpointer
from training.config import compose, validate

LAUNCHER = REPO / "scripts" / "launch_local.py"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    """A small dataset in the official format (9x9 Sudoku layout, train and test splits)."""
    return build_smoke_dataset(str(tmp_path_factory.mktemp("data") / "smoke"), 8, 0)


def _args(data: str, run_dir: Path, *extra: str) -> list[str]:
    return [f"data_paths=[{data}]", "data_generator=null", f"run_dir={run_dir}", *extra]


def _lines(capsys) -> dict[str, str]:
    """check name -> its whole line, for the lines of one in-process run."""
    out = capsys.readouterr().out.splitlines()
    return {line.split()[1]: line for line in out if line.split()[0] in ("ok", "FAIL", "--")}


def test_a_ready_run_passes_every_check_and_leaves_no_probe(data, tmp_path, capsys):
    ckpt = tmp_path / "run" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "mine.txt").write_text("keep me")
    assert preflight.main(_args(data, tmp_path / "run")) == 0
    lines = _lines(capsys)
    assert set(lines) == {"config", "devices", "data", "checkpoints", "run_dir", "disk", "wandb"}
    assert all(line.startswith("ok") for line in lines.values()), lines
    assert "2 split(s), seq_len 81, vocab 11" in lines["data"]
    assert "one checkpoint is" in lines["disk"]
    assert [p.name for p in ckpt.iterdir()] == ["mine.txt"] and (ckpt / "mine.txt").read_text() == "keep me"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoints"]


def test_directories_made_for_the_probes_are_removed_again(data, tmp_path, capsys):
    assert preflight.main(_args(data, tmp_path / "new" / "run")) == 0
    assert "new/run/checkpoints writable" in _lines(capsys)["checkpoints"]
    assert list(tmp_path.iterdir()) == []


def test_a_config_that_does_not_validate_fails_on_one_line(capsys):
    assert preflight.main(["no_such_key=1"]) == 1
    lines = _lines(capsys)
    assert list(lines) == ["config"] and lines["config"].startswith("FAIL") and "no_such_key" in lines["config"]


def test_a_missing_dataset_fails_and_the_other_checks_still_run(tmp_path, capsys):
    assert preflight.main(_args(str(tmp_path / "nowhere"), tmp_path / "run")) == 1
    lines = _lines(capsys)
    assert lines["data"].startswith("FAIL") and str(tmp_path / "nowhere") in lines["data"]
    assert lines["checkpoints"].startswith("ok") and lines["disk"].startswith("--")


def test_a_missing_array_file_is_named(data, tmp_path, capsys):
    broken = tmp_path / "broken"
    fs = fsspec.filesystem("file")
    fs.copy(data, str(broken), recursive=True)
    (broken / "train" / "all__labels.npy").unlink()
    assert preflight.main(_args(str(broken), tmp_path / "run")) == 1
    assert "all__labels.npy" in _lines(capsys)["data"]


def test_an_unwritable_checkpoint_destination_fails_with_a_fix(data, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert preflight.main(_args(data, tmp_path / "run", f"checkpoint_root={blocker}/ckpt")) == 1
    line = _lines(capsys)["checkpoints"]
    assert line.startswith("FAIL") and str(blocker) in line and "checkpoint_root" in line
    assert blocker.read_text() == "not a directory"


def test_too_little_disk_for_the_checkpoints_fails(data, tmp_path, capsys, monkeypatch):
    real = preflight.shutil.disk_usage
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    assert preflight.main(_args(data, tmp_path / "run", "max_to_keep=2")) == 1
    line = _lines(capsys)["disk"]
    assert line.startswith("FAIL") and "1.0 kB free, needs" in line and "for 3 checkpoints" in line


def test_the_checkpoint_size_estimate_matches_a_real_checkpoint(tmp_path):
    cfg = validate(
        compose("quickstart", ["arch.hidden_size=128", "arch.num_heads=4", "global_batch_size=256", "ema=true"])
    )
    dims = ModelDims(vocab_size=11, seq_len=81, num_puzzle_identifiers=40)
    state, _ = _state(cfg, dims=dims, seed=1)
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(lambda: initial_carry(build_model(cfg.arch, dims), cfg.global_batch_size))
    carry = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes)
    ckpt = Checkpointer(str(tmp_path / "ckpt"), cfg, steps_per_eval=1, run_id="preflight-test", dataset={})
    ckpt.save(1, state, carry, {"sampler": {}})
    ckpt.close()
    actual = sum(p.stat().st_size for p in (tmp_path / "ckpt" / "1").rglob("*") if p.is_file())
    assert 0.8 <= actual / preflight.checkpoint_bytes(cfg, dims) <= 1.05


def test_wandb_online_needs_a_key_or_a_netrc_entry(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("NETRC", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    args = _args(data, tmp_path / "run", "wandb.mode=online")
    assert preflight.main(args) == 1
    line = _lines(capsys)["wandb"]
    assert line.startswith("FAIL") and "wandb login" in line and "api.wandb.ai" in line
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password secret\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert preflight.main(args) == 0
    assert "has an entry for api.wandb.ai" in _lines(capsys)["wandb"]
    monkeypatch.delenv("NETRC")
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert preflight.main(args) == 0


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--expect-platform", "tpu"], "JAX runs on cpu, expected tpu"),
        (["--expect-processes", "2"], "1 processes joined, expected 2"),
        (["--expect-devices", "8"], "1 devices in all, expected 8"),
    ],
)
def test_unexpected_devices_or_processes_fail(data, tmp_path, capsys, flags, message):
    assert preflight.main([*flags, *_args(data, tmp_path / "run")]) == 1
    line = _lines(capsys)["devices"]
    assert line.startswith("FAIL") and message in line


def test_gcs_data_and_checkpoints(data, tmp_path, capsys, gcs_emulator):
    bucket = gcs_emulator["bucket"]
    fs = fsspec.filesystem("gs")
    fs.put(data, f"{bucket}/preflight/data", recursive=True)
    root = f"gs://{bucket}/preflight/ckpt"
    assert preflight.main(_args(f"gs://{bucket}/preflight/data", tmp_path / "run", f"checkpoint_root={root}")) == 0
    lines = _lines(capsys)
    assert "2 split(s)" in lines["data"] and f"{root}/quickstart/sudoku4 writable" in lines["checkpoints"]
    assert "local copy of the gs:// datasets" in lines["disk"]
    fs.invalidate_cache()
    assert fs.find(f"{bucket}/preflight/ckpt") == []
    assert preflight.main(_args(data, tmp_path / "run", "checkpoint_root=gs://no-such-bucket/ckpt")) == 1
    line = _lines(capsys)["checkpoints"]
    assert line.startswith("FAIL") and "bucket exists" in line


def _launch(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(LAUNCHER), "--num-processes", "2", "--devices-per-process", "2", "--timeout", "90"]
    cmd += ["--log-dir", str(tmp_path / "logs"), "--script", str(REPO / "scripts" / "preflight.py"), "--", *args]
    env = run_env(str(tmp_path / "jax-cache"))
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_two_processes_agree_and_share_a_gcs_checkpoint_location(data, tmp_path, gcs_emulator):
    root = f"gs://{gcs_emulator['bucket']}/preflight2"
    proc = _launch(tmp_path, *_args(data, tmp_path / "run", f"checkpoint_root={root}", "global_batch_size=8"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for i in range(2):
        log = (tmp_path / "logs" / f"process_{i}.log").read_text()
        assert f"[process {i}/2 " in log and "preflight passed" in log
        assert "4 cpu devices on 2 process(es)" in log and "same metadata on every process" in log
        assert "shared by all 2 processes" in log
    assert fsspec.filesystem("gs").find(f"{gcs_emulator['bucket']}/preflight2") == []


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_a_failure_on_two_processes_fails_both_without_hanging(tmp_path):
    proc = _launch(tmp_path, *_args(str(tmp_path / "nowhere"), tmp_path / "run"))
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (tmp_path / "logs" / "process_0.log").read_text()
    assert "FAIL data" in log and "preflight FAILED on process(es) [0, 1]" in log


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_two_processes_with_separate_checkpoint_directories_are_told_apart(data, tmp_path):
    per_process = f"checkpoint_root={tmp_path}/p${{oc.env:TRM_PROCESS_ID}}"
    proc = _launch(tmp_path, *_args(data, tmp_path / "run", per_process, "global_batch_size=8"))
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (tmp_path / "logs" / "process_0.log").read_text()
    assert "FAIL distributed" in log and "checkpoint_root" in log
    assert "FAIL checkpoints" in log and "probes of processes [1] are not visible" in log
