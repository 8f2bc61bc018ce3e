"""Checkpoints are never lost: unusable steps are moved aside (never deleted), incompatible or
foreign resumes are refused before anything is touched, one run per run_dir at a time. Every test
checks that the checkpoint files a user had are still there, byte for byte."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from dataset.puzzle_dataset import PuzzleDataset
from models.trm import ModelDims
from pretrain_jax import setup_model, train
from tests.pretrain_runs import (
    TIMEOUT_SCALE,
    assert_trees_equal,
    checkpoint_steps,
    losses,
    pretrain_cmd,
    restore,
    run,
    run_env,
    start,
    tail,
    train_args,
    train_rows,
    wait_for_step,
)
from training.checkpointing import Checkpointer, CheckpointError, load_weights
from training.config import ConfigError, compose, validate
from training.run_paths import RunLock
from training.sharding import make_shardings


def _cfg(data, run_dir, *overrides):
    return validate(compose("quickstart", train_args(data, run_dir, *overrides)))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def copied(tmp_path, reference):
    """A copy of the reference run (checkpoints every 2 steps up to 20) and its files' bytes."""
    run_dir = tmp_path / "run"
    shutil.copytree(reference["run_dir"], run_dir)
    return run_dir, _files(run_dir / "checkpoints")


def _array_files(step_dir: Path) -> list[Path]:
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files, f"no array data files under {step_dir}"
    return files


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "change, difference",
    [
        ("global_batch_size=8", "global_batch_size: 16 -> 8"),
        ("arch.hidden_size=64", "arch.hidden_size: 32 -> 64"),
        ("ema=false", "ema: True -> False"),
        ("optimizer=adamw", "optimizer: 'adam_atan2' -> 'adamw'"),
        ("freeze_weights=true", "freeze_weights: False -> True"),
        ("arch.forward_dtype=bfloat16", "arch.forward_dtype: 'float32' -> 'bfloat16'"),
        ("seed=1", "seed: 0 -> 1"),
    ],
)
def test_incompatible_change_is_refused_before_anything_is_touched(data, copied, change, difference):
    run_dir, before = copied
    result = train(_cfg(data, run_dir, change))
    assert result.status == "failed" and result.exit_code == 1
    assert "cannot resume checkpoint step 20" in result.error and difference in result.error, result.error
    assert "run_dir=NEW_DIR" in result.error and "load_checkpoint=" in result.error
    assert _files(run_dir / "checkpoints") == before


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_other_dataset_is_refused(tmp_path, data, copied):
    from dataset.quickstart import build_quickstart_dataset

    run_dir, before = copied
    other = str(tmp_path / "other")
    build_quickstart_dataset(other, seed=1)
    result = train(_cfg(data, run_dir, f"data_paths=[{other}]"))
    assert result.status == "failed" and "data_paths" in result.error
    assert _files(run_dir / "checkpoints") == before


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_compatible_change_resumes_and_keeps_every_step(data, copied, reference, capfd):
    run_dir, before = copied
    result = train(_cfg(data, run_dir, "max_steps=22", "lr=2e-3", "log_every_steps=2", "load_checkpoint=/elsewhere"))
    assert result.status == "completed" and result.step == 22
    logged = capfd.readouterr().err
    for key, old, new in (("lr", "0.001", "0.002"), ("max_steps", "20", "22"), ("log_every_steps", "1", "2")):
        assert f"resuming checkpoint step 20 in {run_dir / 'checkpoints'} with {key} changed: {old} -> {new}" in logged
    assert "load_checkpoint=/elsewhere is ignored: resuming this run_dir's own checkpoint" in logged
    after = _files(run_dir / "checkpoints")
    assert {k: v for k, v in after.items() if k in before} == before
    assert checkpoint_steps(str(run_dir / "checkpoints"))[-1] == 22
    # metrics.jsonl has every logged step once, also after the resume
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_steps = [
        s
        for s, line in zip(steps, (run_dir / "metrics.jsonl").read_text().splitlines(), strict=True)
        if "train/lm_loss" in line
    ]
    assert len(train_steps) == len(set(train_steps))


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["flip", "truncate", "empty_meta"])
# A failed restore once left tensorstore echoing "Event loop is closed" from its threads.
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_unusable_newest_step_is_moved_aside_and_the_previous_one_used(data, copied, reference, how):
    run_dir, before = copied
    ckpt_dir = run_dir / "checkpoints"
    newest = checkpoint_steps(str(ckpt_dir))[-1]
    if how == "flip":  # same size, different bytes: only the checksums can tell
        target = max(_array_files(ckpt_dir / str(newest)), key=lambda p: p.stat().st_size)
        raw = bytearray(target.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        target.write_bytes(bytes(raw))
    elif how == "truncate":
        for p in _array_files(ckpt_dir / str(newest)):
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    else:
        metas = list((ckpt_dir / str(newest) / "meta").rglob("*.json")) or list((ckpt_dir / str(newest)).rglob("meta*"))
        metas = [p for p in metas if p.is_file()]
        assert metas
        for p in metas:
            p.write_text("")
    damaged = _files(ckpt_dir / str(newest))

    result = train(_cfg(data, run_dir))
    assert result.status == "completed"
    quarantined = [p for p in Path(f"{ckpt_dir}-quarantine").glob(f"{newest}-*") if p.is_dir()]
    assert len(quarantined) == 1
    assert _files(quarantined[0]) == damaged  # moved intact, not deleted
    assert Path(f"{quarantined[0]}.reason.txt").read_text().startswith(f"checkpoint step {newest}:")
    # every other step is untouched; retraining reproduced the lost step exactly
    after = _files(ckpt_dir)
    assert {k: v for k, v in after.items() if not k.startswith(f"{newest}/")} == {
        k: v for k, v in before.items() if not k.startswith(f"{newest}/")
    }
    state, carry, step = restore(str(ckpt_dir))
    assert step == newest
    assert_trees_equal(state, reference["state"])
    assert losses(run_dir) == reference["losses"]
    # The rows the first run logged past the step it resumed from were moved aside, not repeated.
    steps = [row["step"] for row in train_rows(run_dir)]
    assert steps == sorted(set(steps)) == list(range(1, newest + 1))
    (aside,) = run_dir.glob(f"metrics.jsonl.after-step-{newest - 2}.*")
    assert [json.loads(line)["step"] for line in aside.read_text().splitlines()] == [newest - 1, newest, newest]
    if how == "empty_meta":  # its arrays are intact: a new run can start from the quarantined step
        cfg = _cfg(data, run_dir.parent / "new", f"load_checkpoint={quarantined[0]}")
        meta = PuzzleDataset([data], "train").metadata
        dims = ModelDims(meta.vocab_size, meta.seq_len, meta.num_puzzle_identifiers)
        fresh = setup_model(cfg, dims, total_steps=100, sh=make_shardings()).state
        loaded = load_weights(str(quarantined[0]), fresh, cfg)
        assert_trees_equal(jax.device_get(loaded.params), reference["state"]["params"])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_run_does_not_resume_another_runs_checkpoints(tmp_path, data, copied):
    run_dir, before = copied
    # Another run_dir pointed at the same checkpoints (as two runs sharing checkpoint_root would be).
    other = tmp_path / "other"
    result = train(_cfg(data, other, f"checkpoint_root={tmp_path / 'root'}"))
    assert result.status == "completed"
    others = _files(tmp_path / "root")
    assert others
    shared = _cfg(data, tmp_path / "third", f"checkpoint_root={tmp_path / 'root'}")
    result = train(shared)
    assert result.status == "failed" and "belongs to another run" in result.error
    assert _files(tmp_path / "root") == others
    assert _files(run_dir / "checkpoints") == before


@pytest.mark.timeout(300)
def test_resume_never_and_must(tmp_path, data, copied):
    run_dir, before = copied
    result = train(_cfg(data, run_dir, "resume=never"))
    assert result.status == "failed" and "resume=never" in result.error
    assert _files(run_dir / "checkpoints") == before
    result = train(_cfg(data, tmp_path / "fresh", "resume=must"))
    assert result.status == "failed" and "resume=must" in result.error


@pytest.mark.timeout(120)
def test_second_run_on_the_same_run_dir_is_refused_and_a_stale_lock_is_taken_over(tmp_path, data):
    run_dir = tmp_path / "run"
    holder = RunLock(str(run_dir))
    try:
        result = train(_cfg(data, run_dir, "max_steps=1"))
        assert result.status == "failed" and "is in use by pid" in result.error
    finally:
        holder.release()
    # A lock left behind by a process that no longer exists (SIGKILL) is stale.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run_dir / "run.lock").write_text(json.dumps({"host": os.uname().nodename, "pid": int(dead.stdout), "start": "1"}))
    lock = RunLock(str(run_dir))
    assert lock.held
    lock.release()
    assert not (run_dir / "run.lock").exists()
    # A lock of another host cannot be checked from here: it is respected.
    (run_dir / "run.lock").write_text(json.dumps({"host": "other-host", "pid": 1, "start": "1"}))
    result = train(_cfg(data, run_dir, "max_steps=1"))
    assert result.status == "failed" and "is in use by pid 1 on host other-host" in result.error


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_second_process_on_a_run_dir_in_use_is_refused_and_changes_nothing(tmp_path, data, compile_cache):
    run_dir = tmp_path / "run"
    args = train_args(data, run_dir, "max_steps=100000", "checkpoint_every_steps=2")
    first = start(pretrain_cmd(args), run_env(compile_cache), tmp_path / "first.txt")
    try:
        wait_for_step(first, run_dir, 2, timeout=120)
        second = run(pretrain_cmd(args), run_env(compile_cache), tmp_path / "second.txt", timeout=100)
        assert second.returncode == 1, tail(second.output)
        assert f"is in use by pid {first.pid} on host {os.uname().nodename}" in second.output, tail(second.output)
        assert first.poll() is None, "the first run stopped"
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    steps = [row["step"] for row in train_rows(run_dir)]
    assert steps == sorted(set(steps)), "two runs wrote metrics.jsonl"


@pytest.mark.timeout(300)
def test_load_checkpoint_errors_name_the_path_and_create_nothing(tmp_path, data, reference):
    typo = tmp_path / "no" / "such" / "ckpt"
    result = train(_cfg(data, tmp_path / "a", f"load_checkpoint={typo}"))
    assert result.status == "failed" and str(typo) in result.error
    assert not (tmp_path / "no").exists()
    other_arch = train(_cfg(data, tmp_path / "b", f"load_checkpoint={reference['ckpt_dir']}", "arch.hidden_size=64"))
    assert other_arch.status == "failed" and "another architecture" in other_arch.error


@pytest.mark.timeout(300)
def test_load_checkpoint_of_a_step_directory(tmp_path, data, reference):
    step_dir = Path(reference["ckpt_dir"]) / "10"
    result = train(_cfg(data, tmp_path / "run", f"load_checkpoint={step_dir}", "max_steps=1"))
    assert result.status == "completed"


@pytest.mark.timeout(120)
def test_run_dir_that_is_a_file_is_refused(tmp_path, data):
    (tmp_path / "file").write_text("mine")
    result = train(_cfg(data, tmp_path / "file"))
    assert result.status == "failed" and "is a file" in result.error
    assert (tmp_path / "file").read_text() == "mine"


def test_config_changes_are_classified_from_the_configs_alone():
    from training.checkpointing import config_changes

    saved = validate(compose("quickstart")).model_dump()
    now = validate(compose("quickstart", ["lr=2e-3", "max_steps=5", "arch.hidden_size=32", "arch.num_heads=2"]))
    resumable, incompatible = config_changes(saved, now.model_dump())
    assert set(resumable) == {"lr", "max_steps"} and resumable["lr"] == (1e-3, 2e-3)
    assert set(incompatible) == {"arch.hidden_size", "arch.num_heads", "arch.puzzle_emb_ndim"}
    # A knob that did not exist when the checkpoint was written: off is no change, on is one.
    older = {k: v for k, v in saved.items() if k != "ema_rates"}
    assert config_changes(older, saved) == ({}, {})
    with_shadows = validate(compose("quickstart", ["ema_rates=[0.99]"])).model_dump()
    assert set(config_changes(older, with_shadows)[1]) == {"ema_rates"}


# Runs inside its own user and mount namespace, on a small tmpfs mounted there: a real full disk
# without root on the host. Resumes the copied reference run (steps 2..20) to step 30 after
# filling the disk, so the first new save (step 22) meets ENOSPC.
_DISK_FULL_DRIVER = """
import errno, json, subprocess, sys
from pathlib import Path
run_dir, cmd, report = Path(sys.argv[1]), json.loads(sys.argv[2]), Path(sys.argv[3])
files = lambda: {str(p.relative_to(run_dir)): p.read_bytes().hex() for p in sorted(run_dir.rglob("*")) if p.is_file()}
before = files()
with open(run_dir / "filler", "wb", buffering=0) as f:
    try:
        while True:
            f.write(b"x" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    # Room for the run's small files (lock, log rows), not for another checkpoint.
    f.truncate(f.tell() - int(sys.argv[5]))
proc = subprocess.run(cmd, capture_output=True, text=True, timeout=float(sys.argv[4]))
after = files()
after.pop("filler")
result = {"code": proc.returncode, "output": proc.stdout + proc.stderr, "before": before, "after": after}
result["metrics"] = (run_dir / "metrics.jsonl").read_text().splitlines()
(run_dir / "filler").unlink()  # the user frees space and reruns the same command
again = subprocess.run(cmd, capture_output=True, text=True, timeout=float(sys.argv[4]))
result["rerun"] = {"code": again.returncode, "output": again.stdout + again.stderr}
result["steps_after_rerun"] = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
report.write_text(json.dumps(result))
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("free_kib", [0, 128], ids=["full-at-start", "full-at-the-next-save"])
def test_a_full_disk_stops_with_one_line_and_keeps_every_earlier_file(
    tmp_path, data, reference, compile_cache, free_kib
):
    if shutil.which("unshare") is None:
        pytest.fail("this test needs util-linux's `unshare` (user and mount namespaces) to mount a small tmpfs")
    small = tmp_path / "small"
    small.mkdir()
    run_dir = small / "run"
    cmd = pretrain_cmd(train_args(data, run_dir, "checkpoint_every_steps=2", "max_steps=30"))
    driver, report = tmp_path / "driver.py", tmp_path / "report.json"
    driver.write_text(_DISK_FULL_DRIVER)
    script = (
        f"mount -t tmpfs -o size=64m tmpfs {small} && cp -a {reference['run_dir']} {run_dir} && exec "
        f"{sys.executable} {driver} {run_dir} '{json.dumps(cmd)}' {report} {200 * TIMEOUT_SCALE} {free_kib * 1024}"
    )
    proc = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
        env=run_env(compile_cache),
        capture_output=True,
        text=True,
        timeout=250 * TIMEOUT_SCALE,
    )
    assert proc.returncode == 0 and report.exists(), f"the namespace driver failed:\n{proc.stdout}\n{proc.stderr}"
    result = json.loads(report.read_text())
    out = result["output"]
    assert result["code"] == 1, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0], out
    if free_kib:  # found at the step after the failed background write, not at the next save
        assert "writing checkpoint step 22" in errors[0] and "the last good checkpoint is step 20" in errors[0], out
        assert max(row["step"] for row in map(json.loads, result["metrics"])) <= 23, out
    else:
        assert str(run_dir) in errors[0], out
    assert "Traceback" not in out, out
    assert result["rerun"]["code"] == 0, result["rerun"]["output"]
    assert {"20", "22", "30"} <= set(result["steps_after_rerun"]), result["steps_after_rerun"]
    before, after = result["before"], result["after"]
    assert {k: after.get(k) for k in before if k.startswith("checkpoints/")} == {
        k: v for k, v in before.items() if k.startswith("checkpoints/")
    }


@pytest.mark.timeout(120)
def test_non_finite_weights_are_never_written(tmp_path, data, reference):
    state, carry, _ = restore(reference["ckpt_dir"])
    kernel = state["params"]["lm_head"]["kernel"].copy()
    kernel[0, 0] = np.inf
    state["params"]["lm_head"]["kernel"] = kernel
    ckpt_dir = tmp_path / "ckpt"
    ckpt = Checkpointer(str(ckpt_dir), _cfg(data, tmp_path / "run"), steps_per_eval=10, run_id="test", dataset={})
    try:
        with pytest.raises(CheckpointError, match="step 3 was not saved: its weights or optimizer state are non-fin"):
            ckpt.save(3, state, carry, {})
        assert ckpt.steps() == []
        assert ckpt.last_good() == f"no checkpoint has been written to {ckpt_dir} yet"
    finally:
        ckpt.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_dataset_rebuilt_at_the_same_path_is_refused_before_anything_is_touched(tmp_path):
    from dataset.build_sudoku_dataset import build, generate
    from dataset.quickstart import build_quickstart_dataset

    data, run_dir = tmp_path / "data", tmp_path / "run"
    build_quickstart_dataset(str(data))
    assert train(_cfg(str(data), run_dir, "max_steps=4", "checkpoint_every_steps=2")).status == "completed"
    ckpt_dir = run_dir / "checkpoints"
    shutil.rmtree(data)  # "rebuilt": 9x9 Sudoku where the 4x4 quick-start data was
    generate(str(tmp_path / "csv"), num_train=3, num_test=2, min_rating=1, seed=7)
    build(str(tmp_path / "csv"), str(data), num_aug=9, seed=0)
    before = _files(ckpt_dir)

    result = train(_cfg(str(data), run_dir, "max_steps=4"))
    assert result.status == "failed"
    assert "the training data's dataset.json changed since it was saved" in result.error
    assert "seq_len: 16 -> 81" in result.error and "run_dir=NEW_DIR" in result.error
    assert _files(ckpt_dir) == before and not Path(f"{ckpt_dir}-quarantine").exists()

    # A checkpoint that predates the dataset record: its array shapes still tell, before any read.
    for meta in ckpt_dir.glob("*/meta/metadata"):
        saved = json.loads(meta.read_text())
        del saved["dataset"]
        meta.write_text(json.dumps(saved))
    before = _files(ckpt_dir)
    result = train(_cfg(str(data), run_dir, "max_steps=4"))
    assert result.status == "failed"
    assert "cannot resume checkpoint step 4" in result.error and "its arrays do not fit this run" in result.error
    assert "saved (16, 16) int32, now (16, 81) int32" in result.error
    assert _files(ckpt_dir) == before and not Path(f"{ckpt_dir}-quarantine").exists()


@pytest.mark.timeout(120)
def test_a_transient_read_error_on_gcs_is_retried_not_quarantined(tmp_path, data, gcs_emulator, monkeypatch):
    monkeypatch.setattr("training.checkpointing.time.sleep", lambda s: None)
    directory = f"gs://{gcs_emulator['bucket']}/transient/checkpoints"
    ckpt = Checkpointer(directory, _cfg(data, tmp_path / "run"), steps_per_eval=10, run_id="test", dataset={})
    calls = []

    def flaky(step):
        calls.append(step)
        if len(calls) == 1:
            raise ValueError("UNAVAILABLE: connection reset by peer")
        return {"meta": "ok"}

    try:
        assert ckpt._read(7, "metadata", flaky) == {"meta": "ok"}
        assert calls == [7, 7]
    finally:
        ckpt.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_sweep_runs_every_job_and_no_job_resumes_another_jobs_state(tmp_path, data, compile_cache):
    shared = tmp_path / "shared"
    sweep = ["max_steps=2", "lr=1e-3,2e-3", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = run(pretrain_cmd(["-m", *train_args(data, shared), *sweep]), run_env(compile_cache), tmp_path / "a.txt", 200)
    assert proc.returncode == 1, tail(proc.output)
    assert "a sweep job must not resume another job's state: lr: 0.001 -> 0.002" in proc.output, tail(proc.output)
    assert "error: sweep job [" in proc.output and "lr=0.002] failed (exit code 1)" in proc.output
    assert json.loads((shared / "summary.json").read_text())["status"] == "completed"  # job 0's, untouched
    assert yaml.safe_load((shared / "config.yaml").read_text())["lr"] == 1e-3

    # One run_dir per job: both train, and the sweep exits 0.
    args = ["-m", *train_args(data, tmp_path / "lr_${lr}"), *sweep]
    proc = run(pretrain_cmd(args), run_env(compile_cache), tmp_path / "b.txt", 200)
    assert proc.returncode == 0, tail(proc.output)
    for lr in ("0.001", "0.002"):
        assert json.loads((tmp_path / f"lr_{lr}" / "summary.json").read_text())["status"] == "completed"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_degenerate_dataset_or_an_invalid_knob_stops_at_start_and_touches_no_checkpoint(tmp_path, data, copied):
    run_dir, before = copied
    broken = tmp_path / "broken"
    shutil.copytree(data, broken)
    indices = broken / "train" / "all__puzzle_indices.npy"
    np.save(indices, np.zeros_like(np.load(indices)))  # every puzzle empty
    result = train(_cfg(str(broken), run_dir))
    assert result.status == "failed" and "train/all__puzzle_indices.npy: must run from 0" in result.error
    assert _files(run_dir / "checkpoints") == before

    for knob, message in (
        ("log_every_steps=0", "log_every_steps"),
        ("max_to_keep=0", "max_to_keep"),
        ("lr=-1", "lr"),
        ("arch.expansion=-2", "arch.expansion"),
    ):
        with pytest.raises(ConfigError, match=message):
            train(_cfg(data, run_dir, knob))
    assert _files(run_dir / "checkpoints") == before
