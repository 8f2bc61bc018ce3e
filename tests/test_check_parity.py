"""The parity acceptance test: the JAX model reproduces the official PyTorch fixtures."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures" / "trm_reference"


def _run(*dirs):
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "check_parity.py"), *map(str, dirs)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )


@pytest.mark.timeout(300)
def test_shipped_fixtures_pass():
    out = _run(FIXTURES)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = out.stdout.strip().splitlines()[-1]
    assert summary.endswith(" 0 failed"), summary
    # Every case of the folder was compared, including gradients and teacher-forced steps.
    for needle in (
        "mlp_t:grad/",
        "att_rope:train/3[teacher-forced]/z_H",
        "att_learned:eval/4[chained]/logits",
        "adam_atan2:param/4",
        "signsgd:table_after",
        "stablemax:grad_logits",
        "lr_schedule:lr/min_ratio_0.1",
    ):
        assert needle in out.stdout


def _copy_case(tmp_path, case):
    for ext in ("json", "npz"):
        shutil.copy(FIXTURES / f"{case}.{ext}", tmp_path / f"{case}.{ext}")
    return tmp_path


@pytest.mark.timeout(300)
def test_perturbed_weight_fails(tmp_path):
    """A 1e-3 change to one official weight must be caught (the check can fail)."""
    _copy_case(tmp_path, "att_learned")
    arrays = dict(np.load(tmp_path / "att_learned.npz"))
    key = "param/model.inner.L_level.layers.1.mlp.down_proj.weight"
    arrays[key] = arrays[key] + np.float32(1e-3)
    np.savez(tmp_path / "att_learned.npz", **arrays)
    out = _run(tmp_path)
    assert out.returncode == 1
    assert "FAIL att_learned:train/1[chained]/logits" in out.stdout


@pytest.mark.timeout(120)
def test_wrong_optimizer_variant_fails(tmp_path):
    """The adam-atan2 0.0.2 rule (bias correction inside atan2) differs from the 0.0.3 golden."""
    _copy_case(tmp_path, "adam_atan2")
    arrays = dict(np.load(tmp_path / "adam_atan2.npz"))
    for k in range(1, 5):
        arrays[f"param/{k}"] = arrays[f"variant/adam_atan2_0.0.2/param/{k}"]
    np.savez(tmp_path / "adam_atan2.npz", **arrays)
    out = _run(tmp_path)
    assert out.returncode == 1 and "FAIL adam_atan2:param/" in out.stdout


@pytest.mark.timeout(60)
def test_uncompared_arrays_fail(tmp_path):
    _copy_case(tmp_path, "signsgd")
    arrays = dict(np.load(tmp_path / "signsgd.npz"))
    arrays["surprise"] = np.zeros(3)
    np.savez(tmp_path / "signsgd.npz", **arrays)
    out = _run(tmp_path)
    assert out.returncode == 1 and "signsgd:surprise" in out.stdout and "not compared" in out.stdout


def test_empty_directory_fails(tmp_path):
    out = _run(tmp_path)
    assert out.returncode == 1
